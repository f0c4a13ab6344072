"""What usage costs, at full precision (no rounding here: invoices round once per line).

- ``instance.seconds``: the instance type's on-demand price per hour in force at that hour in
  its region and the organisation's currency, per second (price / 3600);
- ``instance.disk_gb_seconds`` and ``volume.gb_seconds``: ``STORAGE_PRICE_PER_GB_MONTH`` of the
  currency, per GB-second (a month is 730 hours);
- meters operators define: their ``MeterPrice`` in force at that hour, per unit.
"""

import bisect
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.conf import settings

from portal.catalog.models import Price
from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, HOUR, VOLUME
from portal.metering.models import MeterPrice

SECONDS_PER_HOUR = Decimal(3600)
SECONDS_PER_MONTH = Decimal(730 * 3600)


class Rater:
    """Prices usage of one currency. Loads the price history once (two queries)."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self._compute: dict[tuple[int, int], tuple[list[datetime], list[Decimal]]] = defaultdict(
            lambda: ([], [])
        )
        for price in (
            Price.objects.filter(currency=currency)
            .order_by("effective_from", "id")
            .only("instance_type_id", "region_id", "effective_from", "on_demand_per_hour")
        ):
            times, amounts = self._compute[(price.instance_type_id, price.region_id)]
            times.append(price.effective_from)
            amounts.append(price.on_demand_per_hour)
        self._meters: dict[int, tuple[list[datetime], list[Decimal]]] = defaultdict(
            lambda: ([], [])
        )
        for price in MeterPrice.objects.filter(currency=currency).order_by("effective_from", "id"):
            times, amounts = self._meters[price.meter_id]
            times.append(price.effective_from)
            amounts.append(price.price_per_unit)
        self.storage_per_gb_month = Decimal(settings.STORAGE_PRICE_PER_GB_MONTH[currency])

    @staticmethod
    def _in_force(history: tuple[list[datetime], list[Decimal]], at: datetime) -> Decimal | None:
        """The price in force at the start of the hour ``at``; for an hour in which the first
        price appeared (a new type or meter), that first price: usage is never free by accident."""
        times, amounts = history
        index = bisect.bisect_right(times, at) - 1
        if index >= 0:
            return amounts[index]
        if times and times[0] < at + HOUR:
            return amounts[0]
        return None

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
        if meter_key == COMPUTE:
            per_hour = self._in_force(
                self._compute.get((instance_type_id, region_id), ([], [])), hour
            )
            return per_hour / SECONDS_PER_HOUR if per_hour is not None else Decimal(0)
        if meter_key in (BOOT_DISK, VOLUME):
            return self.storage_per_gb_month / SECONDS_PER_MONTH
        price = self._in_force(self._meters.get(meter_id, ([], [])), hour)
        return price if price is not None else Decimal(0)

    def cost(self, record) -> Decimal:
        """Quantity times price, multiplying before dividing (so an hour at 7.00/h is 7.00
        exactly), at full precision."""
        key = record.meter.key
        if key == COMPUTE:
            history = self._compute.get((record.instance_type_id, record.region_id), ([], []))
            per_hour = self._in_force(history, record.hour_start)
            return (
                record.quantity * per_hour / SECONDS_PER_HOUR
                if per_hour is not None
                else Decimal(0)
            )
        if key in (BOOT_DISK, VOLUME):
            return record.quantity * self.storage_per_gb_month / SECONDS_PER_MONTH
        price = self._in_force(self._meters.get(record.meter_id, ([], [])), record.hour_start)
        return record.quantity * price if price is not None else Decimal(0)
