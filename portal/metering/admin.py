"""Operators' admin for metering.

- Meters: operators define the meters customers report usage events on (a CloudEvent's
  ``type`` is the meter's key). Built-in meters are measured by the portal from the instance
  lifecycle: only their name can be edited (key, unit, aggregation and "active" are the
  code's), and they cannot be deleted. Their keys are reserved for them.
- Meter prices are append-only, like catalog prices: new rows are added on the meter's page,
  from now or later (never in the past: usage already rated would change); existing rows are
  shown read-only with their status and are never changed or deleted. Each addition writes an
  audit row (``meter_price.set``).
- Usage records, usage events and closed hours are read-only: closing and rebuilding hours
  (``portal.metering.services``) and the ingestion API write them, never an operator.
"""

import re
from datetime import datetime, timedelta

from django import forms
from django.contrib import admin
from django.core.validators import MinValueValidator
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, Value
from django.db.models.expressions import Case, When
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _

from portal.accounts.middleware import client_ip
from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.admin_base import ReadOnlyAdmin as BaseReadOnlyAdmin
from portal.metering.lifecycle_usage import NO_GPU
from portal.metering.models import ClosedHour, Meter, MeterPrice, UsageEvent, UsageRecord
from portal.metering.services import BUILT_IN_METERS

# A start time picked with the widget's "Now" button is a few seconds old when it arrives.
PRICE_BACKDATE_TOLERANCE = timedelta(minutes=5)
METER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BUILT_IN_READ_ONLY = ["key", "unit", "aggregation", "is_active"]


def _operator(request: HttpRequest) -> Actor:
    """Staff acting on metering, which belongs to no organisation."""
    return Actor(
        user=request.user,
        organization=None,
        role=None,
        ip_address=client_ip(request),
        operator=True,
    )


class ReadOnlyAdmin(BaseReadOnlyAdmin):
    # These tables grow by the hour: no COUNT(*) of the whole table on every page.
    show_full_result_count = False


# --- meters and their prices ------------------------------------------------------------------

SCHEDULED, IN_FORCE, SUPERSEDED = "scheduled", "in force", "superseded"


def meter_prices_with_status(queryset: QuerySet[MeterPrice], now=None) -> QuerySet[MeterPrice]:
    """Annotate ``price_status``: scheduled (starts after now), in force (the latest at or
    before now for its meter, currency and region, if it has one) or superseded. One query,
    no N+1."""
    now = now or timezone.now()
    newer_in_force = MeterPrice.objects.filter(
        meter=OuterRef("meter"),
        currency=OuterRef("currency"),
        effective_from__gt=OuterRef("effective_from"),
        effective_from__lte=now,
    )
    return queryset.annotate(
        price_status=Case(
            When(effective_from__gt=now, then=Value(SCHEDULED)),
            When(
                Q(region__isnull=True) & Exists(newer_in_force.filter(region__isnull=True)),
                then=Value(SUPERSEDED),
            ),
            When(
                Q(region__isnull=False) & Exists(newer_in_force.filter(region=OuterRef("region"))),
                then=Value(SUPERSEDED),
            ),
            default=Value(IN_FORCE),
            output_field=CharField(),
        )
    )


class MeterPriceForm(forms.ModelForm):
    """A new price row: empty start means now; a start in the past is refused. A region only
    for the no-GPU mode's meter (its price per hour there)."""

    class Meta:
        model = MeterPrice
        fields = ["currency", "region", "price_per_unit", "effective_from"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "effective_from" in self.fields:
            field = self.fields["effective_from"]
            field.required = False
            field.initial = None  # not the model's "now", which is stale by the time it is sent
            field.show_hidden_initial = False
            field.help_text = "Empty for now; a future time schedules the change."
        if "price_per_unit" in self.fields:
            self.fields["price_per_unit"].validators.append(
                MinValueValidator(0, message="A price cannot be negative.")
            )

    def clean(self):
        cleaned = super().clean()
        meter_id = self.instance.meter_id
        if cleaned.get("region") is not None and meter_id is not None:
            key = Meter.objects.filter(pk=meter_id).values_list("key", flat=True).first()
            if key != NO_GPU:
                self.add_error(
                    "region",
                    _("Only the no-GPU mode's price (%(key)s) is set per region.")
                    % {"key": NO_GPU},
                )
        return cleaned

    def clean_effective_from(self) -> datetime:
        value = self.cleaned_data.get("effective_from")
        now = timezone.now()
        if value is None:
            return now
        if value < now - PRICE_BACKDATE_TOLERANCE:
            raise forms.ValidationError(
                _(
                    "A price cannot start in the past: usage already rated would change. "
                    "Leave this empty for now, or pick a future time."
                )
            )
        return value


class MeterPriceInline(admin.TabularInline):
    """Append-only: existing rows are read-only (Django ignores edits posted for them)."""

    model = MeterPrice
    form = MeterPriceForm
    fields = ["currency", "region", "price_per_unit", "effective_from", "status"]
    readonly_fields = ["status"]
    ordering = ["currency", "-effective_from"]
    extra = 1
    can_delete = False

    def get_queryset(self, request):
        return meter_prices_with_status(super().get_queryset(request))

    @admin.display(description=_("status"))
    def status(self, obj: MeterPrice) -> str:
        return getattr(obj, "price_status", "")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class MeterForm(forms.ModelForm):
    key = forms.CharField(
        max_length=Meter._meta.get_field("key").max_length,
        help_text=_(
            "What customers send as a CloudEvent's type, e.g. tokens.generated: "
            "letters, digits, dots, underscores and hyphens."
        ),
    )

    class Meta:
        model = Meter
        fields = ["key", "name", "unit", "aggregation", "is_active", "tax_code", "vat_rate"]

    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if not METER_KEY.match(key):
            raise forms.ValidationError(
                _(
                    "Use letters, digits, dots, underscores and hyphens, starting with a letter "
                    "or digit (e.g. tokens.generated)."
                )
            )
        if key in BUILT_IN_METERS:
            raise forms.ValidationError(
                _("'%(key)s' is reserved for the portal's own meter.") % {"key": key}
            )
        if Meter.objects.filter(key=key).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(
                _("A meter with the key '%(key)s' already exists.") % {"key": key}
            )
        return key


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    form = MeterForm
    list_display = ["key", "name", "unit", "aggregation", "built_in", "is_active"]
    list_filter = ["built_in", "is_active", "aggregation"]
    search_fields = ["key", "name"]
    fields = [
        "key",
        "name",
        "unit",
        "aggregation",
        "built_in",
        "is_active",
        "tax_code",
        "vat_rate",
    ]
    inlines = [MeterPriceInline]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.built_in:
            return ["built_in", *BUILT_IN_READ_ONLY]
        return ["built_in"]

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.built_in:
            return False  # the lifecycle's usage is recorded on it
        return super().has_delete_permission(request, obj)

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is not MeterPrice:
            return
        actor = _operator(request)
        for price in formset.new_objects:
            audit_record(
                actor=actor,
                action="meter_price.set",
                target=price,
                details={
                    "meter": price.meter.key,
                    "currency": price.currency,
                    "price_per_unit": str(price.price_per_unit),
                    "from": price.effective_from.isoformat(),
                    **({"region": price.region.code} if price.region_id else {}),
                },
            )


# --- usage --------------------------------------------------------------------------------------


class HourFilter(admin.SimpleListFilter):
    """One UTC hour: the last 24 closed hours, or any ``?hour=2026-03-10T09:00Z``."""

    title = "hour"
    parameter_name = "hour"

    def lookups(self, request, model_admin):
        # From ClosedHour (a row an hour), not a DISTINCT over every record.
        hours = ClosedHour.objects.order_by("-hour_start").values_list("hour_start", flat=True)[:24]
        return [(f"{h:%Y-%m-%dT%H:00Z}", f"{h:%Y-%m-%d %H:00} UTC") for h in hours]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        moment = parse_datetime(self.value())
        if moment is None or moment.tzinfo is None:
            return queryset.none()
        return queryset.filter(hour_start=moment)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "hour_start",
        "organization",
        "subject_type",
        "subject_id",
        "meter",
        "quantity",
        "unit",
        "closed_at",
    ]
    list_filter = [
        "meter",
        "subject_type",
        HourFilter,
        ("hour_start", admin.DateFieldListFilter),
    ]
    search_fields = ["organization__name", "organization__slug", "subject_id"]
    list_select_related = ["organization", "meter"]
    # Newest first by primary key: no index orders the whole table by hour (columns still sort).
    ordering = ["-id"]


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = [
        "time",
        "organization",
        "meter",
        "subject",
        "value",
        "source",
        "event_id",
        "received_at",
    ]
    list_filter = [
        "meter",
        ("time", admin.DateFieldListFilter),
        ("received_at", admin.DateFieldListFilter),
    ]
    search_fields = ["organization__name", "organization__slug", "subject", "source", "event_id"]
    list_select_related = ["organization", "meter"]
    ordering = ["-id"]  # newest first, by primary key (as records)


@admin.register(ClosedHour)
class ClosedHourAdmin(ReadOnlyAdmin):
    list_display = ["hour_start", "records", "closed_at"]
    date_hierarchy = "hour_start"
