"""Filter fields every API list shares."""

from datetime import UTC, datetime

import django_filters
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from django_filters.fields import IsoDateTimeField

from portal.errors import ErrorCode


class BoundedIsoDateTimeField(IsoDateTimeField):
    """An ISO date-time between the years 1900 and 9998, in UTC.

    Other years overflow the database, and PostgreSQL refuses UTC offsets past ±15:59 that
    ISO 8601 and Python allow (``-22:28``), so the value is converted to UTC first.
    """

    def clean(self, value):
        try:
            value = super().clean(value)
        except OverflowError:
            value = datetime.min
        if value is None:
            return None
        if not 1900 <= value.year <= 9998:
            raise ValidationError(
                _("Give a date between the years 1900 and 9998."), code=ErrorCode.INVALID
            )
        return value.astimezone(UTC) if value.tzinfo else value


class BoundedDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = BoundedIsoDateTimeField
