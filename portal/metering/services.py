"""Closing usage into hourly records, rebuilding any range, and live (open-hour) usage.

``usage_close_hour`` writes the records of one ended UTC hour; a record is unique per
(subject, meter, hour, price period), so closing an hour again changes nothing. An hour in which
a price of the subject takes effect is recorded per price period (``rating.PriceCuts``). ``usage_rebuild`` recomputes a
range from the lifecycle events and makes the records exactly what they should be.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from portal.accounts.models import Organization
from portal.compute.models import Instance, Volume
from portal.compute.selectors import instance_state_steps, instances_in_window, volumes_in_window
from portal.metering.lifecycle_usage import (
    BOOT_DISK,
    COMPUTE,
    HOUR,
    MICRO,
    NO_GPU,
    VOLUME,
    hour_floor,
    instance_usage,
    period_of,
    seconds,
    volume_usage,
)
from portal.metering.models import (
    Aggregation,
    ClosedHour,
    Meter,
    MeterPrice,
    SubjectType,
    UsageEvent,
    UsageRecord,
)
from portal.metering.rating import SECONDS_PER_HOUR, PriceCuts

BUILT_IN_METERS = {
    COMPUTE: ("Instance running time", "second"),
    # priced per hour (its meter prices, per region and currency), metered in seconds
    NO_GPU: ("Instance running time without GPUs (no-GPU mode)", "second"),
    BOOT_DISK: ("Boot disk kept while stopped", "GB-second"),
    VOLUME: ("Volume storage", "GB-second"),
}


def builtin_meters() -> dict[str, Meter]:
    meters = {}
    for key, (name, unit) in BUILT_IN_METERS.items():
        meters[key], _ = Meter.objects.get_or_create(
            key=key, defaults={"name": name, "unit": unit, "built_in": True}
        )
    return meters


def _lifecycle_usage(
    window_start: datetime, window_end: datetime, organization=None
) -> list[UsageRecord]:
    """The records the lifecycle gives for [window_start, window_end), in three queries."""
    meters = builtin_meters()
    cuts = PriceCuts(window_start, window_end)
    instances = instances_in_window(window_start, window_end, organization)
    volumes = volumes_in_window(window_start, window_end, organization)
    facts = {
        row["id"]: row
        for row in instances.values(
            "id",
            "organization_id",
            "organization__currency",
            "instance_type_id",
            "region_id",
            "disk_gb",
        )
    }
    transitions = instance_state_steps(instances, window_end)
    records = []
    for instance_id, steps in transitions.items():
        fact = facts[instance_id]
        usage = instance_usage(
            steps,
            disk_gb=fact["disk_gb"],
            window_start=window_start,
            window_end=window_end,
            cuts=cuts.compute(
                fact["organization__currency"], fact["instance_type_id"], fact["region_id"]
            ),
            no_gpu_cuts=cuts.meter(fact["organization__currency"], meters[NO_GPU].pk),
        )
        for (meter_key, hour, period), quantity in usage.items():
            records.append(
                UsageRecord(
                    organization_id=fact["organization_id"],
                    subject_type=SubjectType.INSTANCE,
                    subject_id=str(instance_id),
                    meter=meters[meter_key],
                    hour_start=hour,
                    period_start=period,
                    quantity=quantity,
                    unit=meters[meter_key].unit,
                    instance_type_id=fact["instance_type_id"],
                    region_id=fact["region_id"],
                )
            )
    for volume in volumes.values(
        "id", "organization_id", "region_id", "created_at", "deleted_at", "size_gb"
    ):
        usage = volume_usage(
            created_at=volume["created_at"],
            deleted_at=volume["deleted_at"],
            size_gb=volume["size_gb"],
            window_start=window_start,
            window_end=window_end,
        )
        for (meter_key, hour, period), quantity in usage.items():
            records.append(
                UsageRecord(
                    organization_id=volume["organization_id"],
                    subject_type=SubjectType.VOLUME,
                    subject_id=str(volume["id"]),
                    meter=meters[meter_key],
                    hour_start=hour,
                    period_start=period,
                    quantity=quantity,
                    unit=meters[meter_key].unit,
                    region_id=volume["region_id"],
                )
            )
    records.extend(_event_usage(window_start, window_end, organization, cuts=cuts))
    return [r for r in records if r.quantity > 0]


AGGREGATE = {
    Aggregation.SUM: lambda v: sum(v, Decimal(0)),
    Aggregation.MAX: max,
    Aggregation.COUNT: lambda v: Decimal(len(v)),
    Aggregation.LATEST: lambda v: v[-1],
}
# Summed meters count what happened when it happened; a gauge's hourly figure (max, latest)
# holds over the whole hour, so across a price change it is shared by time.
COUNTED_AT_THE_MOMENT = (Aggregation.SUM, Aggregation.COUNT)


def _event_usage(
    window_start: datetime, window_end: datetime, organization=None, *, cuts: PriceCuts
) -> list[UsageRecord]:
    """External usage events aggregated per (subject, meter, hour) with the meter's aggregation,
    and per price period of the hour when a price of the meter takes effect within it."""
    events = UsageEvent.objects.filter(time__gte=window_start, time__lt=window_end).select_related(
        "meter"
    )
    if organization is not None:
        events = events.filter(organization=organization)
    currencies: dict[int, str] = {}
    if cuts.meters_cut:
        currencies = dict(
            Organization.objects.filter(pk__in=events.values("organization_id")).values_list(
                "pk", "currency"
            )
        )
    buckets: dict[tuple, list] = {}
    for event in events.order_by("time", "id"):
        key = (event.organization_id, event.subject, event.meter_id, hour_floor(event.time))
        bucket = buckets.setdefault(key, [event.meter, []])
        bucket[1].append((event.time, event.value))
    records = []
    for (org_id, subject, _meter_id, hour), (meter, readings) in buckets.items():
        aggregation = Aggregation(meter.aggregation)
        meter_cuts = cuts.meter(currencies.get(org_id, ""), meter.pk) if currencies else []
        within = [cut for cut in meter_cuts if hour < cut < hour + HOUR]
        if not within:
            parts = {hour: AGGREGATE[aggregation]([value for _t, value in readings])}
        elif aggregation in COUNTED_AT_THE_MOMENT:
            by_period: dict[datetime, list] = {}
            for moment, value in readings:
                by_period.setdefault(period_of(moment, within), []).append(value)
            parts = {period: AGGREGATE[aggregation](values) for period, values in by_period.items()}
        else:
            parts = _shared_by_time(
                AGGREGATE[aggregation]([value for _t, value in readings]), hour, within
            )
        for period, quantity in parts.items():
            records.append(
                UsageRecord(
                    organization_id=org_id,
                    subject_type=SubjectType.EXTERNAL,
                    subject_id=subject,
                    meter=meter,
                    hour_start=hour,
                    period_start=period,
                    quantity=quantity,
                    unit=meter.unit,
                )
            )
    return records


def _shared_by_time(quantity: Decimal, hour: datetime, cuts: list[datetime]) -> dict:
    """A gauge's figure for the hour shared between its price periods by their length, to the
    micro-unit, the last period taking what rounding leaves so that the parts add up."""
    starts = [hour, *cuts]
    ends = [*cuts, hour + HOUR]
    parts, given = {}, Decimal(0)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if i == len(starts) - 1:
            parts[start] = quantity - given
        else:
            share = (quantity * seconds(end - start) / SECONDS_PER_HOUR).quantize(MICRO)
            parts[start] = share
            given += share
    return parts


def usage_close_hour(*, hour_start: datetime) -> int:
    """Write the records of one ended hour. Safe to run again: existing records stay as they are.

    Returns how many records were new.
    """
    hour_start = hour_floor(hour_start)
    if hour_start + HOUR > timezone.now():
        raise ValueError(f"The hour starting {hour_start:%Y-%m-%d %H:%M} has not ended yet.")
    records = _lifecycle_usage(hour_start, hour_start + HOUR)
    with transaction.atomic():
        before = UsageRecord.objects.filter(hour_start=hour_start).count()
        UsageRecord.objects.bulk_create(records, batch_size=2000, ignore_conflicts=True)
        after = UsageRecord.objects.filter(hour_start=hour_start).count()
        ClosedHour.objects.update_or_create(hour_start=hour_start, defaults={"records": after})
    return after - before


def usage_close_hours(*, start: datetime, end: datetime) -> int:
    """Close every ended hour in [start, end) at once: the records closing them one by one
    would write, from one pass over the lifecycle (a few queries, whatever the number of hours).
    For catching up a bounded range, such as a demo month: the records of the whole range are
    held in memory. Safe to run again. Returns how many records were new."""
    start, end = hour_floor(start), hour_floor(end)
    if end > hour_floor(timezone.now()):
        raise ValueError(f"The hour starting {end - HOUR:%Y-%m-%d %H:%M} has not ended yet.")
    if end <= start:
        return 0
    records = _lifecycle_usage(start, end)
    in_range = UsageRecord.objects.filter(hour_start__gte=start, hour_start__lt=end)
    with transaction.atomic():
        before = in_range.count()
        UsageRecord.objects.bulk_create(records, batch_size=2000, ignore_conflicts=True)
        counts = {
            row["hour_start"]: row["n"]
            for row in in_range.order_by().values("hour_start").annotate(n=Count("pk"))
        }
        hours = [start + HOUR * i for i in range(int((end - start) / HOUR))]
        closed = ClosedHour.objects.filter(hour_start__gte=start, hour_start__lt=end)
        known = {c.hour_start: c for c in closed}
        for hour, row in known.items():
            row.records = counts.get(hour, 0)
        ClosedHour.objects.bulk_update(known.values(), ["records"], batch_size=2000)
        ClosedHour.objects.bulk_create(
            [ClosedHour(hour_start=h, records=counts.get(h, 0)) for h in hours if h not in known],
            batch_size=2000,
        )
    return sum(counts.values()) - before


MAX_HOURS_PER_RUN = 24 * 7
# An hour is closed only this long after it ends, so a usage event or a lifecycle step that
# arrives a moment late is still in it. Events for closed hours are refused (ingest).
CLOSE_GRACE = timedelta(minutes=10)


def usage_close_recent() -> int:
    """Close every ended hour since the last closed one, oldest first (the periodic task: a
    missed run, or a week of downtime, is caught up over a few runs; no hour is skipped)."""
    closable = hour_floor(timezone.now() - CLOSE_GRACE)
    hour = first_open_hour()
    created, runs = 0, 0
    while hour < closable and runs < MAX_HOURS_PER_RUN:
        created += usage_close_hour(hour_start=hour)
        hour += HOUR
        runs += 1
    return created


@transaction.atomic
def usage_rebuild(*, start: datetime, end: datetime) -> dict[str, int]:
    """Recompute the lifecycle records of the ended hours in [start, end) from the events and
    make the stored records exactly that: missing ones added, wrong ones fixed, extra removed."""
    start = hour_floor(start)
    end = min(hour_floor(end), hour_floor(timezone.now()))
    wanted = {
        (
            r.organization_id,
            r.subject_type,
            r.subject_id,
            r.meter_id,
            r.hour_start,
            r.period_start,
        ): r
        for r in _lifecycle_usage(start, end)
    }
    existing = {
        (
            r.organization_id,
            r.subject_type,
            r.subject_id,
            r.meter_id,
            r.hour_start,
            r.period_start,
        ): r
        for r in UsageRecord.objects.filter(
            hour_start__gte=start, hour_start__lt=end
        ).select_for_update()
    }
    created = [wanted[k] for k in wanted.keys() - existing.keys()]
    UsageRecord.objects.bulk_create(created, batch_size=2000)
    fixed = 0
    for key in wanted.keys() & existing.keys():
        record, correct = existing[key], wanted[key]
        if record.quantity != correct.quantity:
            record.quantity = correct.quantity
            record.save(update_fields=["quantity"])
            fixed += 1
    extra = [existing[k].pk for k in existing.keys() - wanted.keys()]
    UsageRecord.objects.filter(pk__in=extra).delete()
    return {
        "created": len(created),
        "fixed": fixed,
        "removed": len(extra),
        "kept": len(wanted) - len(created) - fixed,
    }


def closed_until() -> datetime | None:
    """The end of the last closed hour (usage before it is closed for billing), or None."""
    last = ClosedHour.objects.order_by("-hour_start").values_list("hour_start", flat=True).first()
    return last + HOUR if last is not None else None


def first_open_hour(now: datetime | None = None) -> datetime:
    """The first hour not closed into records yet: the hour after the last closed one, or, if
    nothing was ever closed, the hour of the first instance, volume or usage event."""
    now = now or timezone.now()
    current = hour_floor(now)
    last = ClosedHour.objects.filter(hour_start__lt=current).order_by("-hour_start").first()
    if last is not None:
        return last.hour_start + HOUR
    firsts = [
        Instance.objects.order_by("created_at").values_list("created_at", flat=True).first(),
        Volume.objects.order_by("created_at").values_list("created_at", flat=True).first(),
        UsageEvent.objects.order_by("time").values_list("time", flat=True).first(),
    ]
    known = [moment for moment in firsts if moment is not None]
    return min(hour_floor(min(known)), current) if known else current


def usage_open(*, organization, now: datetime | None = None) -> list[UsageRecord]:
    """Usage not closed into records yet, computed now from the events: with the stored
    records, live figures are never more than a moment behind."""
    now = now or timezone.now()
    return _lifecycle_usage(first_open_hour(now), now, organization=organization)


def hours_between(start: datetime, end: datetime) -> int:
    return int((hour_floor(end) - hour_floor(start)) / timedelta(hours=1))


ZERO = Decimal(0)


# The demo's no-GPU price per hour (a small CPU-only shape: copying data, setting up), for
# every region, in each currency the demo catalog prices (CNY at the demo catalog's rate).
DEMO_NO_GPU_PER_HOUR = {"USD": Decimal("0.12"), "CNY": Decimal("0.85")}


@transaction.atomic
def no_gpu_demo_prices() -> str:
    """Give the no-GPU mode a price in every region in each demo currency, unless it has one
    there already (``manage.py load_demo_data``; safe to run again)."""
    meter = builtin_meters()[NO_GPU]
    added = []
    for currency, per_hour in DEMO_NO_GPU_PER_HOUR.items():
        if not MeterPrice.objects.filter(meter=meter, currency=currency).exists():
            MeterPrice.objects.create(
                meter=meter,
                currency=currency,
                price_per_unit=per_hour,
                effective_from=timezone.now(),
            )
            added.append(f"{per_hour} {currency}/h")
    return f"No-GPU mode: {', '.join(added) or 'priced already'}"
