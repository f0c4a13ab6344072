"""Usage figures for pages and the API: stored hourly records plus the part not closed yet.

``usage_summary`` groups by day, instance, instance type or meter, with quantities per meter and
the cost at full precision in the organisation's currency. The page, its CSV and
``GET /api/v1/usage`` all use it, so they always agree.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from portal.catalog.models import InstanceType
from portal.compute.models import Instance, Volume
from portal.compute.selectors import organization_footprint_now, running_placements
from portal.metering.models import UsageRecord
from portal.metering.rating import SECONDS_PER_HOUR, SECONDS_PER_MONTH, Rater
from portal.metering.services import first_open_hour, usage_open

GROUPS = ("day", "instance", "instance_type", "meter")


@dataclass
class UsageRow:
    key: str
    label: str
    quantities: dict[str, Decimal] = field(default_factory=dict)
    costs: dict[str, Decimal] = field(default_factory=dict)  # per meter
    cost: Decimal = Decimal(0)


@dataclass
class UsageSummary:
    currency: str
    start: datetime
    end: datetime
    group_by: str
    rows: list[UsageRow]

    @property
    def total_cost(self) -> Decimal:
        return sum((row.cost for row in self.rows), Decimal(0))


def _records(organization, start: datetime, end: datetime, now: datetime) -> list[UsageRecord]:
    open_from = first_open_hour(now)
    stored = list(
        UsageRecord.objects.filter(
            organization=organization, hour_start__gte=start, hour_start__lt=min(end, open_from)
        ).select_related("meter")
    )
    if end > open_from:
        live = [
            r for r in usage_open(organization=organization, now=now) if start <= r.hour_start < end
        ]
        stored.extend(live)
    return stored


def usage_summary(
    *,
    organization,
    start: datetime,
    end: datetime,
    group_by: str = "day",
    now: datetime | None = None,
    rater: Rater | None = None,
) -> UsageSummary:
    """``rater``: the price history to use, when the caller already has the organisation's."""
    now = now or timezone.now()
    records = _records(organization, start, end, now)
    rater = rater or Rater(organization.currency)
    rows: dict[str, UsageRow] = {}
    names = _names(records, group_by)
    for record in records:
        key = _key(record, group_by)
        row = rows.get(key)
        if row is None:
            row = rows[key] = UsageRow(key=key, label=names.get(key, key))
        meter, cost = record.meter.key, rater.cost(record)
        row.quantities[meter] = row.quantities.get(meter, Decimal(0)) + record.quantity
        row.costs[meter] = row.costs.get(meter, Decimal(0)) + cost
        row.cost += cost
    ordered = sorted(
        rows.values(), key=lambda r: r.key if group_by == "day" else (-r.cost, r.label)
    )
    return UsageSummary(
        currency=organization.currency, start=start, end=end, group_by=group_by, rows=ordered
    )


def _key(record: UsageRecord, group_by: str) -> str:
    if group_by == "day":
        return record.hour_start.date().isoformat()
    if group_by == "instance":
        return f"{record.subject_type}:{record.subject_id}"
    if group_by == "instance_type":
        return (
            f"type:{record.instance_type_id}"
            if record.instance_type_id
            else f"{record.subject_type}s"
        )
    return record.meter.key


def subject_names(subjects: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Names of usage subjects: ``("instance", "12")`` -> ``"trainer"``, ``("volume", "3")`` ->
    ``"datasets"`` (two queries at most; external subjects have no name here)."""
    subjects = set(subjects)
    names: dict[tuple[str, str], str] = {}
    for kind, model in (("instance", Instance), ("volume", Volume)):
        ids = {subject_id for subject_type, subject_id in subjects if subject_type == kind}
        if ids:
            rows = model.objects.filter(pk__in=ids).values_list("pk", "name")
            names.update({(kind, str(pk)): name for pk, name in rows})
    return names


def _names(records: list[UsageRecord], group_by: str) -> dict[str, str]:
    if group_by == "instance":
        names = subject_names((r.subject_type, r.subject_id) for r in records)
        return {
            f"{kind}:{pk}": name if kind == "instance" else f"volume {name}"
            for (kind, pk), name in names.items()
        }
    if group_by == "instance_type":
        type_ids = {r.instance_type_id for r in records if r.instance_type_id}
        names = {
            f"type:{pk}": name
            for pk, name in InstanceType.objects.filter(pk__in=type_ids).values_list("pk", "name")
        }
        names["volumes"] = "Volumes"
        return names
    return {}


@dataclass(frozen=True)
class Burn:
    running_instances: int
    per_hour: Decimal  # what the running fleet costs per hour now
    month_to_date: Decimal


def burn_rate(organization, now: datetime | None = None, *, rater: Rater | None = None) -> Burn:
    """Running instances, their cost per hour now, and spend since the month began (one price
    history load, or none with the caller's ``rater``)."""
    now = now or timezone.now()
    rater = rater or Rater(organization.currency)
    running = running_placements(organization)
    per_hour = _compute_per_hour(running, now, rater=rater)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spent = usage_summary(
        organization=organization,
        start=month_start,
        end=now + timedelta(seconds=1),
        now=now,
        rater=rater,
    )
    return Burn(running_instances=len(running), per_hour=per_hour, month_to_date=spent.total_cost)


def committed_burn(organization, now: datetime | None = None, *, rater: Rater) -> Decimal:
    """What everything the organisation holds costs per hour now, at full precision: instances
    running or on their way to running at their hourly price, kept boot disks and volumes at
    the storage price (three queries and the caller's price history)."""
    now = now or timezone.now()
    footprint = organization_footprint_now(organization)
    compute = _compute_per_hour(footprint.compute, now, rater=rater)
    return compute + storage_per_hour(footprint.stored_gb, rater=rater)


def _compute_per_hour(placements: Iterable[tuple[int, int, bool]], now: datetime, *, rater: Rater):
    """The hourly prices, now, of instances at these (instance type id, region id, with GPUs)
    placements (without GPUs: the region's no-GPU price)."""
    return sum((rater.per_hour(t, r, gpus, now) for t, r, gpus in placements), Decimal(0))


def storage_per_hour(size_gb: int, *, rater: Rater) -> Decimal:
    """What ``size_gb`` of storage costs per hour (a month is 730 hours), at full precision."""
    return Decimal(size_gb) * rater.storage_per_gb_month * SECONDS_PER_HOUR / SECONDS_PER_MONTH
