"""Usage: hourly records closed from the instance lifecycle and from external usage events.

A ``UsageRecord`` is unique per (subject, meter, hour), so closing or rebuilding an hour twice
never double-counts. ``UsageEvent`` rows are CloudEvents, unique on (source, id).
"""

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import Currency, Organization
from portal.tax import tax_code_field, tax_constraints, vat_rate_field

QUANTITY_MAX_DIGITS = 24
QUANTITY_DECIMAL_PLACES = 6


class Aggregation(models.TextChoices):
    SUM = "sum", _("Sum")
    MAX = "max", _("Maximum")
    COUNT = "count", _("Count")
    LATEST = "latest", _("Latest value")


class Meter(models.Model):
    """Something usage is measured in. Built-in meters come from the lifecycle; operators
    define others for external usage events (``type`` of a CloudEvent names the meter)."""

    key = models.CharField(
        max_length=80,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "Letters, digits, dots, hyphens and underscores."
            )
        ],
        help_text=_("e.g. tokens.generated (the CloudEvent type)"),
    )
    name = models.CharField(max_length=120)
    unit = models.CharField(max_length=20, help_text=_("e.g. second, GB-second, request"))
    aggregation = models.CharField(
        max_length=10, choices=Aggregation.choices, default=Aggregation.SUM
    )
    built_in = models.BooleanField(default=False, help_text=_("Measured by the portal itself."))
    is_active = models.BooleanField(default=True)
    tax_code = tax_code_field()
    vat_rate = vat_rate_field()

    class Meta:
        ordering = ["key"]
        constraints = [
            *tax_constraints("metering_meter"),
            models.CheckConstraint(
                condition=Q(aggregation__in=Aggregation.values),
                name="metering_meter_aggregation_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.key


class MeterPrice(models.Model):
    """Price per unit of a meter, per currency, in force from ``effective_from``.

    The no-GPU mode's meter (``instance.cpu_only_seconds``) is priced per hour of running
    without GPUs, and may be priced per region: a row for the region wins over a row without
    one (every region). Other meters have no region."""

    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="prices")
    currency = models.CharField(max_length=3, choices=Currency.choices)
    region = models.ForeignKey(
        "catalog.Region",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text=_("Only for the no-GPU mode's price; empty: every region."),
    )
    price_per_unit = models.DecimalField(
        max_digits=20,
        decimal_places=12,
        help_text=_(
            "Per unit of the meter; for no-GPU mode (instance.cpu_only_seconds), per hour."
        ),
    )
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["meter", "currency", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["meter", "currency", "effective_from"],
                condition=Q(region__isnull=True),
                name="metering_meterprice_one_per_moment",
            ),
            models.UniqueConstraint(
                fields=["meter", "currency", "region", "effective_from"],
                condition=Q(region__isnull=False),
                name="metering_meterprice_region_one_per_moment",
            ),
            models.CheckConstraint(
                condition=Q(price_per_unit__gte=0), name="metering_meterprice_not_negative"
            ),
        ]

    def __str__(self) -> str:
        where = f" in {self.region}" if self.region_id else ""
        return f"{self.meter} {self.price_per_unit} {self.currency}/{self.meter.unit}{where}"


class SubjectType(models.TextChoices):
    INSTANCE = "instance", _("Instance")
    VOLUME = "volume", _("Volume")
    EXTERNAL = "external", _("External subject")


class UsageRecord(models.Model):
    """Usage of one subject on one meter in one UTC hour, or in one price period of it.

    An hour in which a price of the subject takes effect (at 14:30, say) has one record per
    price period, [14:00, 14:30) and [14:30, 15:00), each starting at ``period_start`` and rated
    at the price in force then; in any other hour ``period_start`` is ``hour_start``."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_records"
    )
    subject_type = models.CharField(max_length=10, choices=SubjectType.choices)
    subject_id = models.CharField(max_length=255)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="records")
    hour_start = models.DateTimeField(help_text=_("UTC, on the hour."))
    period_start = models.DateTimeField(
        help_text=_(
            "When the price period of this record starts: the hour, or the moment within "
            "it a price took effect."
        )
    )
    quantity = models.DecimalField(
        max_digits=QUANTITY_MAX_DIGITS, decimal_places=QUANTITY_DECIMAL_PLACES
    )
    unit = models.CharField(max_length=20)
    # what rating needs, as it was in that hour
    instance_type_id = models.BigIntegerField(null=True, blank=True)
    region_id = models.BigIntegerField(null=True, blank=True)
    closed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["hour_start", "subject_type", "subject_id", "meter"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "subject_type",
                    "subject_id",
                    "meter",
                    "hour_start",
                    "period_start",
                ],
                name="metering_record_one_per_period",
            ),
            models.CheckConstraint(
                condition=Q(period_start__gte=F("hour_start")),
                name="metering_record_period_in_hour",
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=0), name="metering_record_not_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "hour_start"], name="metering_record_org_hour"),
            models.Index(fields=["hour_start"], name="metering_record_hour"),
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # an hour's only period starts with it (not read when the field is deferred)
        if self.__dict__.get("period_start") is None and self.__dict__.get("hour_start"):
            self.period_start = self.hour_start

    def __str__(self) -> str:
        return f"{self.subject_type}:{self.subject_id} {self.meter_id} {self.hour_start:%Y-%m-%d %H}h {self.quantity}"


class UsageEvent(models.Model):
    """An external usage report (a CloudEvent). Unique on (source, id): a re-sent event is kept once."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_events"
    )
    source = models.CharField(max_length=255)
    event_id = models.CharField(max_length=255)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="events")
    subject = models.CharField(max_length=255)
    time = models.DateTimeField()
    value = models.DecimalField(
        max_digits=QUANTITY_MAX_DIGITS, decimal_places=QUANTITY_DECIMAL_PLACES
    )
    data = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["time", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "source", "event_id"],
                name="metering_event_source_id_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["organization", "meter", "time"], name="metering_event_org_meter_time"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source}/{self.event_id}"


class ClosedHour(models.Model):
    """An hour whose lifecycle usage has been closed into records (live figures add the rest)."""

    hour_start = models.DateTimeField(unique=True)
    closed_at = models.DateTimeField(default=timezone.now)
    records = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-hour_start"]

    def __str__(self) -> str:
        return f"{self.hour_start:%Y-%m-%d %H}:00"


class GpuSample(models.Model):
    """One NVML reading of one physical GPU (operator telemetry, not a customer's usage).

    Unique per (GPU, time), so a re-sent sample is kept once. ``energy_mj`` is the GPU's total
    energy counter (monotonic since the driver loaded); an instance's energy is the sum of its
    increases while the instance held the GPU (``portal.metering.telemetry``). Readings the
    GPU does not support are empty.
    """

    gpu = models.ForeignKey("catalog.Gpu", on_delete=models.CASCADE, related_name="samples")
    time = models.DateTimeField()
    utilization_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    memory_utilization_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    memory_used_bytes = models.BigIntegerField(null=True, blank=True)
    power_mw = models.PositiveIntegerField(null=True, blank=True)
    energy_mj = models.BigIntegerField(null=True, blank=True)
    temperature_c = models.SmallIntegerField(null=True, blank=True)
    sm_clock_mhz = models.PositiveIntegerField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["gpu", "time"]
        constraints = [
            models.UniqueConstraint(fields=["gpu", "time"], name="metering_gpusample_gpu_time"),
            models.CheckConstraint(
                condition=Q(utilization_pct__lte=100) & Q(memory_utilization_pct__lte=100),
                name="metering_gpusample_pct_range",
            ),
            models.CheckConstraint(
                condition=Q(energy_mj__gte=0) & Q(memory_used_bytes__gte=0),
                name="metering_gpusample_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_id} {self.time:%Y-%m-%d %H:%M:%S.%f}"
