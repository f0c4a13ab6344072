from datetime import datetime

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from portal.accounts.models import AuditEvent


class BoundedIsoDateTimeField(IsoDateTimeField):
    """An ISO date-time between the years 1900 and 9998; others overflow the database."""

    def clean(self, value):
        try:
            value = super().clean(value)
        except OverflowError:
            value = datetime.min
        if value is not None and not 1900 <= value.year <= 9998:
            raise ValidationError("Give a date between the years 1900 and 9998.", code="invalid")
        return value


class BoundedDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = BoundedIsoDateTimeField


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.CharFilter(
        field_name="action", lookup_expr="startswith", help_text="e.g. ssh_key or ssh_key.create"
    )
    actor = django_filters.CharFilter(field_name="actor_label", lookup_expr="icontains")
    target_type = django_filters.CharFilter(field_name="target_type", lookup_expr="iexact")
    since = BoundedDateTimeFilter(field_name="created_at", lookup_expr="gte", label="From")
    until = BoundedDateTimeFilter(field_name="created_at", lookup_expr="lt", label="Until")

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "target_type", "since", "until"]
