"""Usage from the instance lifecycle, computed exactly from the instance events.

An instance's event history is a sequence of states, each from the moment of its event until
the next one. From it:

- ``instance.seconds`` (compute): every second in ``running`` or ``rebooting``, from the moment
  the backend reported it running until it left running (a reboot keeps its GPUs, so it is
  billed straight through), at the instance type and region it ran as;
- ``instance.cpu_only_seconds`` (no-GPU mode): the same seconds of a running period it was
  started without GPUs (its events say ``"gpus": false``), priced at the no-GPU price;
- ``instance.disk_gb_seconds`` (the kept boot disk): every second in ``stopping``, ``stopped``
  or ``starting``, times the boot disk's size;
- ``volume.gb_seconds``: every second a volume exists, times its size.

Everything is split at UTC hour boundaries, and within an hour at the moments a price of the
subject takes effect (``cuts``), at full precision (microseconds), so the records of a subject
add up to exactly its total. Each piece is keyed by its hour and the start of its price period
(the hour itself unless a price took effect within it).
"""

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

# Which states bill running time and which keep the boot disk is compute's to say.
from portal.compute.lifecycle import BILLED_RUNNING
from portal.compute.lifecycle import DISK_KEPT as BOOT_DISK_KEPT

COMPUTE = "instance.seconds"
NO_GPU = "instance.cpu_only_seconds"
BOOT_DISK = "instance.disk_gb_seconds"
VOLUME = "volume.gb_seconds"

HOUR = timedelta(hours=1)
MICRO = Decimal("0.000001")


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def seconds(delta: timedelta) -> Decimal:
    """A duration in seconds, exactly (microsecond resolution)."""
    return (
        Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000
    ).quantize(MICRO)


@dataclass(frozen=True)
class Segment:
    state: str
    start: datetime
    end: datetime
    gpus: bool = True  # False: in no-GPU mode


def segments(transitions: Iterable[tuple], until: datetime) -> list[Segment]:
    """(time, new state) pairs in order, or (time, new state, with GPUs) triples → the states
    with their spans, cut at ``until``."""
    result: list[Segment] = []
    previous: tuple[datetime, str, bool] | None = None
    for moment, state, *mode in transitions:
        if previous is not None and moment > previous[0]:
            result.append(Segment(previous[1], previous[0], min(moment, until), previous[2]))
        previous = (moment, state, bool(mode[0]) if mode else True)
        if moment >= until:
            break
    if previous is not None and previous[0] < until:
        result.append(Segment(previous[1], previous[0], until, previous[2]))
    return [s for s in result if s.end > s.start]


def period_of(moment: datetime, cuts: list[datetime]) -> datetime:
    """The start of the price period ``moment`` is in: the last cut of its hour at or before
    it, or the hour."""
    hour = hour_floor(moment)
    index = bisect.bisect_right(cuts, moment) - 1
    if index >= 0 and cuts[index] >= hour:
        return cuts[index]
    return hour


def split_by_hour(
    start: datetime, end: datetime, cuts: list[datetime] = ()
) -> Iterable[tuple[datetime, datetime, Decimal]]:
    """(hour start, period start, seconds) for each UTC hour the span [start, end) touches,
    and within it each price period (``cuts``: the moments prices take effect, in order)."""
    cursor = start
    while cursor < end:
        hour = hour_floor(cursor)
        stop = min(end, hour + HOUR)
        index = bisect.bisect_right(cuts, cursor)
        if index < len(cuts) and cuts[index] < stop:
            stop = cuts[index]
        yield hour, period_of(cursor, cuts), seconds(stop - cursor)
        cursor = stop


def instance_usage(
    transitions: Iterable[tuple],
    *,
    disk_gb: int,
    window_start: datetime,
    window_end: datetime,
    cuts: list[datetime] = (),
    no_gpu_cuts: list[datetime] = (),
) -> dict[tuple[str, datetime, datetime], Decimal]:
    """(meter, hour, period start) → quantity for one instance, for the hours in
    [window_start, window_end); running time is cut at ``cuts`` (its price changes), running
    time in no-GPU mode at ``no_gpu_cuts`` (the no-GPU price's); storage has one price."""
    usage: dict[tuple[str, datetime, datetime], Decimal] = defaultdict(Decimal)
    for segment in segments(transitions, window_end):
        start, end = max(segment.start, window_start), min(segment.end, window_end)
        if end <= start:
            continue
        if segment.state in BILLED_RUNNING and not segment.gpus:
            for hour, period, amount in split_by_hour(start, end, no_gpu_cuts):
                usage[(NO_GPU, hour, period)] += amount
        elif segment.state in BILLED_RUNNING:
            for hour, period, amount in split_by_hour(start, end, cuts):
                usage[(COMPUTE, hour, period)] += amount
        elif segment.state in BOOT_DISK_KEPT:
            for hour, period, amount in split_by_hour(start, end):
                usage[(BOOT_DISK, hour, period)] += amount * disk_gb
    return dict(usage)


def volume_usage(
    *,
    created_at: datetime,
    deleted_at: datetime | None,
    size_gb: int,
    window_start: datetime,
    window_end: datetime,
) -> dict[tuple[str, datetime, datetime], Decimal]:
    start = max(created_at, window_start)
    end = min(deleted_at or window_end, window_end)
    usage: dict[tuple[str, datetime, datetime], Decimal] = defaultdict(Decimal)
    if end > start:
        for hour, period, amount in split_by_hour(start, end):
            usage[(VOLUME, hour, period)] += amount * size_gb
    return dict(usage)
