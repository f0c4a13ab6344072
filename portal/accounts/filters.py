import django_filters
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import AuditEvent
from portal.api.filters import BoundedDateTimeFilter


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.CharFilter(
        field_name="action", lookup_expr="startswith", help_text=_("e.g. ssh_key or ssh_key.create")
    )
    actor = django_filters.CharFilter(field_name="actor_label", lookup_expr="icontains")
    target_type = django_filters.CharFilter(field_name="target_type", lookup_expr="iexact")
    since = BoundedDateTimeFilter(field_name="created_at", lookup_expr="gte", label=_("From"))
    until = BoundedDateTimeFilter(field_name="created_at", lookup_expr="lt", label=_("Until"))

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "target_type", "since", "until"]
