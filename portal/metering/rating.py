"""What usage costs, at full precision (no rounding here: invoices round once per line).

One pricing strategy per kind of meter (``PRICING``, ``pricing_for``):

- compute (``instance.seconds``): the instance type's on-demand price per hour in force at that
  hour in its region and the organisation's currency (``portal.catalog.selectors``), per second
  (price / 3600);
- no-GPU mode (``instance.cpu_only_seconds``): its ``MeterPrice`` per hour in force at that
  hour in the organisation's currency, for the region (a row for the region, else one for
  every region), per second (price / 3600); never the GPU price;
- storage (``instance.disk_gb_seconds``, ``volume.gb_seconds``): ``STORAGE_PRICE_PER_GB_MONTH``
  of the currency, per GB-second (a month is 730 hours);
- operator meters (any other key): their ``MeterPrice`` in force at that hour, per unit.

A price takes effect at the exact moment of its ``effective_from``: the records of an hour in
which one does are cut into price periods (``PriceCuts``, used when usage is recorded), and each
record is priced at the start of its period (``UsageRecord.period_start``).

A ``Rater`` holds one currency's price history, loaded once (two queries): build one per unit
of work (a debit run, an invoice, a page) and ask it for every record.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from portal.catalog.selectors import (
    HourlyPrices,
    PriceHistory,
    price_changes_off_the_hour,
    price_histories,
)
from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, NO_GPU, VOLUME
from portal.metering.models import Meter, MeterPrice

SECONDS_PER_HOUR = Decimal(3600)
SECONDS_PER_MONTH = Decimal(730 * 3600)


@dataclass(frozen=True)
class Usage:
    """What a price depends on: the meter, the instance type and region (compute), the hour."""

    meter_id: int
    hour: datetime
    instance_type_id: int | None = None
    region_id: int | None = None


class MeterPricing:
    """How one kind of meter is priced. ``factor`` is metered units per invoiced unit (seconds
    per hour, GB-seconds per GB-month, or 1); ``unit`` the invoiced unit ("" for the meter's
    own)."""

    kind: str = ""
    unit: str = ""
    factor: Decimal = Decimal(1)

    def per_unit(self, rater: "Rater", usage: Usage) -> Decimal:
        """Price of one metered unit in that hour (0 when nothing is priced)."""
        raise NotImplementedError

    def cost(self, rater: "Rater", usage: Usage, quantity: Decimal) -> Decimal:
        """Quantity times price, at full precision."""
        raise NotImplementedError

    def changes_within(self, rater: "Rater", usage: Usage, start: datetime, end: datetime) -> bool:
        """Whether the price may change in [start, end) (a price takes effect in it)."""
        return bool(self.changes_in(rater, usage, start, end))

    def changes_in(
        self, rater: "Rater", usage: Usage, start: datetime, end: datetime
    ) -> list[datetime]:
        """The moments in [start, end) at which a price takes effect, in order."""
        return []


class ComputePricing(MeterPricing):
    kind, unit, factor = "compute", "hour", SECONDS_PER_HOUR

    def _per_hour(self, rater: "Rater", usage: Usage) -> Decimal | None:
        return rater.hourly.at(
            instance_type_id=usage.instance_type_id, region_id=usage.region_id, at=usage.hour
        )

    def per_unit(self, rater: "Rater", usage: Usage) -> Decimal:
        per_hour = self._per_hour(rater, usage)
        return per_hour / SECONDS_PER_HOUR if per_hour is not None else Decimal(0)

    def cost(self, rater: "Rater", usage: Usage, quantity: Decimal) -> Decimal:
        # multiplying before dividing, so an hour at 7.00/h is 7.00 exactly
        per_hour = self._per_hour(rater, usage)
        return quantity * per_hour / SECONDS_PER_HOUR if per_hour is not None else Decimal(0)

    def changes_in(self, rater, usage, start, end) -> list[datetime]:
        return rater.hourly.changes_in(
            instance_type_id=usage.instance_type_id,
            region_id=usage.region_id,
            start=start,
            end=end,
        )


class NoGpuPricing(MeterPricing):
    """Running time without GPUs: the meter's price per hour for the record's region."""

    kind, unit, factor = "no_gpu", "hour", SECONDS_PER_HOUR

    def per_unit(self, rater: "Rater", usage: Usage) -> Decimal:
        per_hour = rater.no_gpu_per_hour(usage.meter_id, usage.region_id, usage.hour)
        return per_hour / SECONDS_PER_HOUR if per_hour is not None else Decimal(0)

    def cost(self, rater: "Rater", usage: Usage, quantity: Decimal) -> Decimal:
        # multiplying before dividing, as compute: 1.5 h at 0.80/h is 1.20 exactly
        per_hour = rater.no_gpu_per_hour(usage.meter_id, usage.region_id, usage.hour)
        return quantity * per_hour / SECONDS_PER_HOUR if per_hour is not None else Decimal(0)

    def changes_in(self, rater, usage, start, end) -> list[datetime]:
        moments = set()
        for key in ((usage.meter_id, usage.region_id), usage.meter_id):
            history = rater.meter_prices.get(key)
            if history is not None:
                moments.update(history.changes_in(start, end))
        return sorted(moments)


class StoragePricing(MeterPricing):
    kind, unit, factor = "storage", "GB-month", SECONDS_PER_MONTH

    def per_unit(self, rater: "Rater", usage: Usage) -> Decimal:
        return rater.storage_per_gb_month / SECONDS_PER_MONTH

    def cost(self, rater: "Rater", usage: Usage, quantity: Decimal) -> Decimal:
        return quantity * rater.storage_per_gb_month / SECONDS_PER_MONTH


class OperatorMeterPricing(MeterPricing):
    kind = "meter"

    def _price(self, rater: "Rater", usage: Usage) -> Decimal | None:
        history = rater.meter_prices.get(usage.meter_id)
        return history.at(usage.hour) if history is not None else None

    def per_unit(self, rater: "Rater", usage: Usage) -> Decimal:
        price = self._price(rater, usage)
        return price if price is not None else Decimal(0)

    def cost(self, rater: "Rater", usage: Usage, quantity: Decimal) -> Decimal:
        price = self._price(rater, usage)
        return quantity * price if price is not None else Decimal(0)

    def changes_in(self, rater, usage, start, end) -> list[datetime]:
        history = rater.meter_prices.get(usage.meter_id)
        return history.changes_in(start, end) if history is not None else []


STORAGE = StoragePricing()
OPERATOR_METER = OperatorMeterPricing()
PRICING: dict[str, MeterPricing] = {
    COMPUTE: ComputePricing(),
    NO_GPU: NoGpuPricing(),
    BOOT_DISK: STORAGE,
    VOLUME: STORAGE,
}


def pricing_for(meter_key: str) -> MeterPricing:
    """The pricing strategy of a meter: compute and storage by key, any other an operator's."""
    return PRICING.get(meter_key, OPERATOR_METER)


class Rater:
    """Prices usage of one currency. Loads the price history once (two queries)."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.hourly = HourlyPrices(currency)
        # meter id -> its history; (meter id, region id) -> a region's own (no-GPU mode)
        self.meter_prices: dict[int | tuple[int, int], PriceHistory] = price_histories(
            (meter_id if region_id is None else (meter_id, region_id), moment, amount)
            for meter_id, region_id, moment, amount in MeterPrice.objects.filter(currency=currency)
            .order_by("effective_from", "id")
            .values_list("meter_id", "region_id", "effective_from", "price_per_unit")
        )
        self._no_gpu_meter_id: int | None = None
        self.storage_per_gb_month = Decimal(settings.STORAGE_PRICE_PER_GB_MONTH[currency])

    def no_gpu_per_hour(self, meter_id: int, region_id, at: datetime) -> Decimal | None:
        """The no-GPU price per hour in the region at ``at``: the region's own, else the one
        for every region (None when neither is set)."""
        for key in ((meter_id, region_id), meter_id):
            history = self.meter_prices.get(key)
            price = history.at(at) if history is not None else None
            if price is not None:
                return price
        return None

    def per_hour(self, instance_type_id: int, region_id: int, gpus: bool, at: datetime):
        """What an instance of the type in the region costs per hour at ``at``: the type's
        price, or without GPUs the region's no-GPU price (0 when nothing is priced)."""
        if gpus:
            price = self.hourly.at(instance_type_id=instance_type_id, region_id=region_id, at=at)
        else:
            if self._no_gpu_meter_id is None:
                self._no_gpu_meter_id = no_gpu_meter_id()
            price = self.no_gpu_per_hour(self._no_gpu_meter_id, region_id, at)
        return price if price is not None else Decimal(0)

    def unit_price(
        self,
        *,
        meter_key: str,
        meter_id: int,
        hour: datetime,
        instance_type_id=None,
        region_id=None,
    ) -> Decimal:
        """Price of one unit of the meter in that hour (0 when nothing is priced)."""
        usage = Usage(meter_id, hour, instance_type_id, region_id)
        return pricing_for(meter_key).per_unit(self, usage)

    def cost(self, record) -> Decimal:
        """Quantity times price, multiplying before dividing (so an hour at 7.00/h is 7.00
        exactly), at full precision."""
        usage = Usage(
            record.meter_id, record.period_start, record.instance_type_id, record.region_id
        )
        return pricing_for(record.meter.key).cost(self, usage, record.quantity)


def no_gpu_meter_id() -> int:
    """The no-GPU mode's meter (made by migration ``metering.0005_no_gpu_mode``; 0 if gone)."""
    return Meter.objects.filter(key=NO_GPU).values_list("pk", flat=True).first() or 0


def no_gpu_hourly_price(*, region_id: int, currency: str, at: datetime | None = None):
    """The no-GPU price per hour in force at ``at`` (now) in the region and currency: the
    region's own, else the one for every region; None when there is none (no-GPU mode is then
    not offered there). One query."""
    price = (
        MeterPrice.objects.filter(
            meter__key=NO_GPU, currency=currency, effective_from__lte=at or timezone.now()
        )
        .filter(Q(region_id=region_id) | Q(region__isnull=True))
        .order_by(F("region_id").asc(nulls_last=True), "-effective_from", "-id")
        .values_list("price_per_unit", flat=True)
        .first()
    )
    return price


def _off_the_hour(moment: datetime) -> bool:
    return moment != moment.replace(minute=0, second=0, microsecond=0)


class PriceCuts:
    """The moments within the hours of [start, end) at which a price takes effect off the
    hour: where usage is cut into price periods. Loaded once (two queries, which find nothing
    unless a price was set for a moment within an hour)."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self._compute: dict[tuple, list[datetime]] = defaultdict(list)
        for currency, type_id, region_id, moment in price_changes_off_the_hour(start, end):
            self._compute[(currency, type_id, region_id)].append(moment)
        self._meters: dict[tuple, list[datetime]] = defaultdict(list)
        rows = MeterPrice.objects.filter(
            effective_from__gte=start, effective_from__lt=end
        ).values_list("currency", "meter_id", "effective_from")
        for currency, meter_id, moment in rows:
            if _off_the_hour(moment):
                self._meters[(currency, meter_id)].append(moment)
        for cuts in (*self._compute.values(), *self._meters.values()):
            cuts.sort()

    def compute(self, currency: str, instance_type_id, region_id) -> list[datetime]:
        return self._compute.get((currency, instance_type_id, region_id), [])

    def meter(self, currency: str, meter_id: int) -> list[datetime]:
        return self._meters.get((currency, meter_id), [])

    @property
    def meters_cut(self) -> bool:
        return bool(self._meters)
