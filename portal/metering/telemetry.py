"""GPU telemetry: what each physical GPU did, read through NVML, and the part of it that belongs
to an instance.

Where it comes from
-------------------
``manage.py gpu_agent --host NAME`` runs on a GPU host. Every ``--interval`` seconds it reads each
GPU's utilisation, memory used, power draw, total energy counter, temperature and SM clock
through NVML (:class:`Nvml`, ``pynvml`` from the ``nvidia-ml-py`` package, imported only when
the agent starts) and records them with :func:`telemetry_record`. ``--replay FILE`` sends a
recorded run instead (``data/h200-nvml-samples.csv``: 100 samples at 4 Hz read from a real H200),
so everything works, and is tested, without a GPU.

How it is sent and stored (the design choice)
---------------------------------------------
Telemetry is operator data: a reading of a physical GPU, whoever rents it. So it is not a
customer's ``UsageEvent`` (those belong to an organisation, name a meter an operator defined, and
are rated and billed). Each reading is a ``GpuSample`` of one GPU at one time, unique per
(GPU, time), so a sample sent again changes nothing. No audit row is written: a sample is a
measurement, not a change somebody made.

The agent calls :func:`telemetry_record` in its own process: it runs the portal's code with the
portal's database settings, as a Celery worker does. A sample has a natural CloudEvents form
(``type`` ``gpu.sample``, ``source`` ``host/<name>``, ``subject`` the GPU UUID, ``time``, and the
readings as ``data``) for hosts that cannot reach the database, but taking it needs an endpoint
that authenticates hosts with operator credentials (an organisation's API key must not write
another tenant's GPU readings). That endpoint does not exist, so the agent has no HTTP mode yet.

Whose it is
-----------
A sample belongs to the instance whose allocation held that whole GPU at that moment
(``created_at <= time < released_at``; ``Instance.allocation`` is only the current one, so past
ones are found by their holder, ``instance:<id>``). A MIG slice shares the GPU's power and energy
with other tenants and NVML does not split them per slice (nor reports utilisation in MIG mode),
so a MIG instance shows "not measured per MIG slice". Customers see their GPUs by their place in
the instance (GPU 0, 1, ...), never the host or the physical GPU's UUID.

Energy is the sum of the increases of the GPU's energy counter between consecutive samples
within one holding period; never across two periods, as someone else may have held the GPU in
between. The counter counts from zero when the driver loads, so a drop is a reset and the value
after it (the energy since the reset) is counted. The recorded H200 run gives
(12,169,617 - 2,393,612) mJ = 2.7156 Wh.

The instance page reads all of this in five queries, aggregated in the database (window
functions for the energy, time buckets for the series), so its cost does not grow with the
number of samples read back to Python: the series is averaged into at most ``SERIES_POINTS``
buckets per GPU and holding period.
"""

import contextlib
import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.db import transaction
from django.db.models import (
    Avg,
    BigIntegerField,
    Case,
    Count,
    F,
    FloatField,
    Func,
    IntegerField,
    Max,
    Min,
    Q,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.functions import Cast, Floor, Greatest, Lag, Least
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.catalog.models import GPU_MEMORY_SLOTS, Allocation, Gpu, GpuSlotClaim, Host
from portal.errors import InvalidInput, PortalError
from portal.metering.errors import MeteringErrorCode
from portal.metering.models import GpuSample

DATA_DIR = Path(__file__).resolve().parent / "data"
RECORDED_SAMPLES = DATA_DIR / "h200-nvml-samples.csv"
PROBE_HOST = "h200-euc1-probe"
SERIES_POINTS = 200
FUTURE_TOLERANCE = timedelta(minutes=5)
MJ_PER_WH = 3_600_000
BATCH = 500


# --- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of one GPU. A reading the GPU does not support is None."""

    gpu_uuid: str
    time: datetime
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    memory_used_bytes: int | None = None
    power_mw: int | None = None
    energy_mj: int | None = None
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None


READINGS = tuple(f.name for f in fields(Sample) if f.name not in ("gpu_uuid", "time"))
# what each reading may be (inclusive), as the database columns hold them
LIMITS = {
    "utilization_pct": (0, 100),
    "memory_utilization_pct": (0, 100),
    "memory_used_bytes": (0, 2**63 - 1),
    "power_mw": (0, 2**31 - 1),
    "energy_mj": (0, 2**63 - 1),
    "temperature_c": (-32768, 32767),
    "sm_clock_mhz": (0, 2**31 - 1),
}


@dataclass(frozen=True)
class RecordResult:
    created: int
    duplicates: int


def _check(sample: Sample, latest: datetime) -> None:
    if not isinstance(sample.time, datetime) or timezone.is_naive(sample.time):
        raise InvalidInput(
            _("A sample's time must be a datetime with a time zone."), code=MeteringErrorCode.TIME
        )
    if sample.time > latest:
        raise InvalidInput(
            _("A sample of %(gpu)s is in the future (%(time)s); is the host's clock right?")
            % {"gpu": sample.gpu_uuid, "time": sample.time.isoformat()},
            code=MeteringErrorCode.TIME,
        )
    for name in READINGS:
        value = getattr(sample, name)
        low, high = LIMITS[name]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise InvalidInput(
                _(
                    "%(name)s of %(gpu)s must be a whole number from %(low)s to %(high)s, not %(value)s."
                )
                % {
                    "name": name,
                    "gpu": sample.gpu_uuid,
                    "low": low,
                    "high": high,
                    "value": repr(value),
                },
                code=MeteringErrorCode.READING,
            )


def telemetry_record(*, samples: Iterable[Sample], host: Host | None = None) -> RecordResult:
    """Store GPU samples; one already stored (same GPU and time) is kept as it was.

    With ``host``, every sample must be of one of its GPUs (an agent writes only its own host's
    readings). Refuses the whole batch, writing nothing, if any sample is invalid.
    """
    samples = list(samples)
    if not samples:
        return RecordResult(created=0, duplicates=0)
    gpus = Gpu.objects.filter(uuid__in={s.gpu_uuid for s in samples})
    if host is not None:
        gpus = gpus.filter(host=host)
    gpu_ids = dict(gpus.values_list("uuid", "pk"))
    unknown = sorted({s.gpu_uuid for s in samples} - gpu_ids.keys())
    if unknown:
        raise InvalidInput(
            _("Not a registered GPU of host %(host)s: %(gpus)s.")
            % {"host": host.name, "gpus": ", ".join(unknown)}
            if host is not None
            else _("Not a registered GPU: %(gpus)s.") % {"gpus": ", ".join(unknown)},
            code=MeteringErrorCode.GPU_UNKNOWN,
            details={"gpus": unknown},
        )
    latest = timezone.now() + FUTURE_TOLERANCE
    rows: dict[tuple[int, datetime], Sample] = {}
    for sample in samples:
        _check(sample, latest)
        rows.setdefault((gpu_ids[sample.gpu_uuid], sample.time), sample)
    created = 0
    keys = list(rows)
    with transaction.atomic():
        for i in range(0, len(keys), BATCH):
            chunk = keys[i : i + BATCH]
            times: dict[int, list[datetime]] = defaultdict(list)
            for gpu_id, moment in chunk:
                times[gpu_id].append(moment)
            scope = Q()
            for gpu_id, moments in times.items():
                scope |= Q(gpu_id=gpu_id, time__in=moments)
            existing = set(GpuSample.objects.filter(scope).values_list("gpu_id", "time"))
            new = [
                GpuSample(
                    gpu_id=gpu_id,
                    time=moment,
                    **{name: getattr(rows[gpu_id, moment], name) for name in READINGS},
                )
                for gpu_id, moment in chunk
                if (gpu_id, moment) not in existing
            ]
            GpuSample.objects.bulk_create(new, ignore_conflicts=True)
            created += len(new)
    return RecordResult(created=created, duplicates=len(samples) - created)


def counter_increase(values: Iterable[int | None]) -> int:
    """What a monotonic energy counter counted over consecutive readings: the sum of its
    increases, and after a drop (the driver reloaded and it restarted from zero) the value it
    shows. Empty readings are skipped."""
    total, previous = 0, None
    for value in values:
        if value is None:
            continue
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return total


# --- a recorded run ---------------------------------------------------------------------------

# CSV column -> reading (the columns of nvml-samples.csv; t_s is seconds since the start)
CSV_COLUMNS = {
    "util_gpu_pct": "utilization_pct",
    "util_mem_pct": "memory_utilization_pct",
    "mem_used_bytes": "memory_used_bytes",
    "power_mw": "power_mw",
    "energy_total_mj": "energy_mj",
    "temp_c": "temperature_c",
    "sm_clock_mhz": "sm_clock_mhz",
}


@dataclass(frozen=True)
class Recorded:
    """One line of a recorded run: seconds since its start, and the readings."""

    offset: float
    readings: dict[str, int | None] = field(hash=False)


def load_recording(path: Path) -> list[Recorded]:
    """Read a recorded run (``t_s`` and the columns of ``CSV_COLUMNS``; missing or empty ones are
    None). Raises ``InvalidInput`` naming the line of the first problem."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise InvalidInput(
            _("Cannot read %(path)s: %(reason)s.") % {"path": path, "reason": exc.strerror},
            code=MeteringErrorCode.FILE,
        ) from None
    with handle:
        reader = csv.DictReader(handle)
        if "t_s" not in (reader.fieldnames or []):
            raise InvalidInput(
                _("%(path)s has no t_s column (seconds since the start).") % {"path": path},
                code=MeteringErrorCode.FILE,
            )
        recording: list[Recorded] = []
        for line, row in enumerate(reader, start=2):
            try:
                offset = float(row["t_s"])
                readings = {
                    reading: int(row[column]) if (row.get(column) or "").strip() else None
                    for column, reading in CSV_COLUMNS.items()
                }
            except (TypeError, ValueError):
                raise InvalidInput(
                    _("%(path)s, line %(line)s: not a number.") % {"path": path, "line": line},
                    code=MeteringErrorCode.FILE,
                ) from None
            if recording and offset <= recording[-1].offset:
                raise InvalidInput(
                    _("%(path)s, line %(line)s: t_s must increase from line to line.")
                    % {"path": path, "line": line},
                    code=MeteringErrorCode.FILE,
                )
            recording.append(Recorded(offset=offset, readings=readings))
    if not recording:
        raise InvalidInput(
            _("%(path)s has no samples.") % {"path": path}, code=MeteringErrorCode.FILE
        )
    return recording


def replay_samples(
    recording: Sequence[Recorded], *, gpu_uuid: str, start: datetime
) -> list[Sample]:
    """The recorded readings as samples of one GPU, at ``start`` plus their recorded offsets."""
    return [
        Sample(gpu_uuid=gpu_uuid, time=start + timedelta(seconds=r.offset), **r.readings)
        for r in recording
    ]


# --- NVML -------------------------------------------------------------------------------------


class TelemetryUnavailable(Exception):
    """NVML cannot be read on this machine (no package, no driver, no GPU)."""


class Nvml:
    """The GPUs of this machine through NVML. ``pynvml`` is imported here, not at module level:
    the portal runs on machines without an NVIDIA driver."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise TelemetryUnavailable(
                "pynvml is not installed (it comes with the nvidia-ml-py package)."
            ) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise TelemetryUnavailable(
                f"NVML did not start ({exc}): is this a GPU host with the NVIDIA driver loaded?"
            ) from None
        self._nvml = pynvml
        self.handles: dict[str, object] = {}
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                self.handles[uuid.decode() if isinstance(uuid, bytes) else uuid] = handle
        except pynvml.NVMLError as exc:
            self.close()
            raise TelemetryUnavailable(f"NVML could not list the GPUs ({exc}).") from None

    def _get(self, call, *args) -> object | None:
        try:
            return call(*args)
        except self._nvml.NVMLError:  # not supported on this GPU or in MIG mode, or lost
            return None

    def read(self, uuids: Iterable[str], moment: datetime) -> list[Sample]:
        """One sample of each GPU, all stamped ``moment``."""
        nvml, samples = self._nvml, []
        for uuid in uuids:
            handle = self.handles[uuid]
            rates = self._get(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = self._get(nvml.nvmlDeviceGetMemoryInfo, handle)
            samples.append(
                Sample(
                    gpu_uuid=uuid,
                    time=moment,
                    utilization_pct=_int(getattr(rates, "gpu", None)),
                    memory_utilization_pct=_int(getattr(rates, "memory", None)),
                    memory_used_bytes=_int(getattr(memory, "used", None)),
                    power_mw=_int(self._get(nvml.nvmlDeviceGetPowerUsage, handle)),
                    energy_mj=_int(self._get(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)),
                    temperature_c=_int(
                        self._get(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
                    ),
                    sm_clock_mhz=_int(
                        self._get(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
                    ),
                )
            )
        return samples

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _int(value) -> int | None:
    return None if value is None else int(value)


# --- an instance's share ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Holding:
    """One GPU held whole by the instance for one period (one of its allocations)."""

    position: int  # the GPU's place in the instance: GPU 0, 1, ...
    gpu_id: int
    start: datetime
    end: datetime | None

    def scope(self) -> Q:
        where = Q(gpu_id=self.gpu_id, time__gte=self.start)
        return where & Q(time__lt=self.end) if self.end is not None else where


def _holdings(instance) -> list[_Holding]:
    allocations = list(
        Allocation.objects.filter(holder=f"instance:{instance.pk}").order_by("created_at", "pk")
    )
    uuids = {slot.get("gpu") for a in allocations for slot in a.gpu_slots}
    gpu_ids = dict(Gpu.objects.filter(uuid__in=uuids).values_list("uuid", "pk"))
    return [
        _Holding(
            position=position,
            gpu_id=gpu_ids[slot["gpu"]],
            start=allocation.created_at,
            end=allocation.released_at,
        )
        for allocation in allocations
        for position, slot in enumerate(allocation.gpu_slots)
        if slot.get("size") == GPU_MEMORY_SLOTS and slot.get("gpu") in gpu_ids
    ]


class Epoch(Func):
    """Seconds since 1970 of a datetime column, as a float, on SQLite and PostgreSQL."""

    output_field = FloatField()
    template = "CAST(EXTRACT(EPOCH FROM %(expressions)s) AS double precision)"

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
            **extra,
        )


def energy_text(energy_mj: int | None) -> str:
    """``2.716 Wh``, or kWh from 1,000 Wh on; an em dash when the GPU has no energy counter."""
    if energy_mj is None:
        return "\N{EM DASH}"
    wh = Decimal(energy_mj) / MJ_PER_WH
    return f"{wh:,.3f} Wh" if wh < 1000 else f"{wh / 1000:,.3f} kWh"


@dataclass(frozen=True)
class Point:
    time: datetime
    utilization_pct: float | None
    power_w: float | None


@dataclass(frozen=True)
class GpuTelemetry:
    """One GPU of the instance (by its place in it) over all the periods it held one."""

    position: int
    samples: int
    energy_mj: int | None
    peak_power_w: float | None
    utilization_sum: int
    utilization_samples: int
    segments: tuple[tuple[Point, ...], ...]  # one per holding period, in time order

    @property
    def energy_wh(self) -> Decimal | None:
        return None if self.energy_mj is None else Decimal(self.energy_mj) / MJ_PER_WH

    @property
    def energy_text(self) -> str:
        return energy_text(self.energy_mj)

    @property
    def color(self) -> str:
        return COLORS[self.position % len(COLORS)]

    @property
    def average_utilization_pct(self) -> float | None:
        if not self.utilization_samples:
            return None
        return self.utilization_sum / self.utilization_samples


@dataclass(frozen=True)
class InstanceTelemetry:
    """What the instance's GPUs did while it held them. ``measured`` is False for a MIG slice."""

    measured: bool = True
    gpus: tuple[GpuTelemetry, ...] = ()
    first: datetime | None = None
    last: datetime | None = None

    @property
    def samples(self) -> int:
        return sum(g.samples for g in self.gpus)

    @property
    def has_samples(self) -> bool:
        return self.samples > 0

    @property
    def energy_mj(self) -> int | None:
        values = [g.energy_mj for g in self.gpus if g.energy_mj is not None]
        return sum(values) if values else None

    @property
    def energy_wh(self) -> Decimal | None:
        return None if self.energy_mj is None else Decimal(self.energy_mj) / MJ_PER_WH

    @property
    def energy_text(self) -> str:
        return energy_text(self.energy_mj)

    @property
    def peak_power_w(self) -> float | None:
        values = [g.peak_power_w for g in self.gpus if g.peak_power_w is not None]
        return max(values) if values else None

    @property
    def average_utilization_pct(self) -> float | None:
        count = sum(g.utilization_samples for g in self.gpus)
        return sum(g.utilization_sum for g in self.gpus) / count if count else None

    @property
    def charts(self) -> tuple["Chart", ...]:
        return telemetry_charts(self) if self.has_samples else ()


def gpu_windows(
    *, gpu_ids: Sequence[int], start: datetime, end: datetime, bucket_seconds: int
) -> dict:
    """Compute's idle-watch hook (settings.COMPUTE_GPU_WINDOW_READER): per GPU with samples from
    ``start`` to ``end``, a ``GpuWindow`` (how many samples and utilisation readings, how many
    buckets of ``bucket_seconds`` hold one, the peak utilisation), in one aggregate query."""
    from portal.compute.types import GpuWindow

    buckets = max(1, math.ceil((end - start).total_seconds() / bucket_seconds))
    # which bucket a sample falls in; clamped to the window's, as SQLite's julianday arithmetic
    # may put a sample at ``start`` a few microseconds before it (and one at ``end`` is the last)
    bucket = Greatest(
        Least(
            Cast(
                Floor((Epoch("time") - Value(start.timestamp())) / Value(float(bucket_seconds))),
                IntegerField(),
            ),
            Value(buckets - 1),
        ),
        Value(0),
    )
    found = (
        GpuSample.objects.filter(gpu_id__in=list(gpu_ids), time__gte=start, time__lte=end)
        .annotate(bucket=bucket)
        .order_by()
        .values("gpu_id")
        .annotate(
            n=Count("pk"),
            readings=Count("utilization_pct"),
            covered=Count("bucket", distinct=True),
            peak=Max("utilization_pct"),
        )
    )
    return {
        row["gpu_id"]: GpuWindow(
            samples=row["n"],
            readings=row["readings"],
            covered=row["covered"],
            buckets=buckets,
            peak_utilization_pct=row["peak"],
        )
        for row in found
    }


def instance_page_panel(instance) -> dict:
    """Compute's instance-page hook (settings.COMPUTE_INSTANCE_PAGE_PANELS): the telemetry panel."""
    return {"telemetry": instance_telemetry(instance)}


def instance_telemetry(instance) -> InstanceTelemetry:
    """The telemetry of the GPUs the instance held whole, while it held them, in five queries."""
    if instance.instance_type.mig_profile_id is not None:
        return InstanceTelemetry(measured=False)
    holdings = _holdings(instance)
    if not holdings:
        return InstanceTelemetry()
    scope = Q()
    for holding in holdings:
        scope |= holding.scope()
    which = Case(
        *(When(h.scope(), then=Value(k)) for k, h in enumerate(holdings)),
        output_field=IntegerField(),
    )
    samples = GpuSample.objects.filter(scope).annotate(holding=which).order_by()
    totals = {
        row["holding"]: row
        for row in samples.values("holding").annotate(
            n=Count("pk"),
            first=Min("time"),
            last=Max("time"),
            peak=Max("power_mw"),
            util_sum=Sum("utilization_pct"),
            util_n=Count("utilization_pct"),
            energy_n=Count("energy_mj"),
        )
    }
    if not totals:
        return InstanceTelemetry()
    first = min(row["first"] for row in totals.values())
    last = max(row["last"] for row in totals.values())
    # SERIES_POINTS buckets centred on first, ..., last: the half bucket at each end keeps the
    # first and last samples in 0 and SERIES_POINTS - 1 whatever the float rounding in SQL
    width = max((last - first).total_seconds() / (SERIES_POINTS - 1), 1e-3)
    origin = first.timestamp() - width / 2
    buckets = (
        samples.annotate(bucket=Floor((Epoch("time") - Value(origin)) / Value(width)))
        .values("holding", "bucket")
        .annotate(at=Avg(Epoch("time")), util=Avg("utilization_pct"), power=Avg("power_mw"))
        .order_by("holding", "bucket")
    )
    points: dict[int, list[Point]] = defaultdict(list)
    for row in buckets:
        points[row["holding"]].append(
            Point(
                time=datetime.fromtimestamp(row["at"], tz=UTC),
                utilization_pct=row["util"],
                power_w=row["power"] / 1000 if row["power"] is not None else None,
            )
        )
    energy = _energy(samples, [k for k, row in totals.items() if row["energy_n"]])
    gpus = []
    for position in sorted({h.position for h in holdings}):
        keys = sorted(
            (k for k, h in enumerate(holdings) if h.position == position and k in totals),
            key=lambda k: totals[k]["first"],
        )
        if not keys:
            continue
        peaks = [totals[k]["peak"] for k in keys if totals[k]["peak"] is not None]
        energies = [energy[k] for k in keys if k in energy]
        gpus.append(
            GpuTelemetry(
                position=position,
                samples=sum(totals[k]["n"] for k in keys),
                energy_mj=sum(energies) if energies else None,
                peak_power_w=max(peaks) / 1000 if peaks else None,
                utilization_sum=sum(totals[k]["util_sum"] or 0 for k in keys),
                utilization_samples=sum(totals[k]["util_n"] for k in keys),
                segments=tuple(tuple(points[k]) for k in keys),
            )
        )
    return InstanceTelemetry(gpus=tuple(gpus), first=first, last=last)


def _energy(samples, keys: list[int]) -> dict[int, int]:
    """Energy counted per holding (see ``counter_increase``), in one query: the previous reading
    of the same holding by a window function, and one sum per holding over that."""
    if not keys:
        return {}
    with_previous = samples.filter(energy_mj__isnull=False).annotate(
        previous=Window(Lag("energy_mj"), partition_by=[F("holding")], order_by=F("time").asc())
    )
    step = {
        f"h{k}": Sum(
            Case(
                When(Q(holding=k, previous__isnull=True), then=Value(0)),
                When(
                    Q(holding=k, energy_mj__gte=F("previous")),
                    then=F("energy_mj") - F("previous"),
                ),
                When(holding=k, then=F("energy_mj")),
                default=Value(0),
                output_field=BigIntegerField(),
            )
        )
        for k in keys
    }
    return {
        int(name[1:]): int(value or 0) for name, value in with_previous.aggregate(**step).items()
    }


# --- charts (inline SVG, drawn by templates/compute/includes/telemetry.html) -----------------

# about the size it is drawn at in one of the page's two columns, so 12-unit text reads as 12 px
CHART_WIDTH, CHART_HEIGHT = 440, 180
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 40, 10, 10, 26
COLORS = ("#3d5afe", "#e65100", "#2e7d32", "#8e24aa", "#00838f", "#c62828", "#6d4c41", "#37474f")


@dataclass(frozen=True)
class ChartLine:
    position: int
    color: str
    points: str  # "x,y x,y ..." for a <polyline>
    dot: tuple[str, str] | None  # a segment of one point is drawn as a dot


@dataclass(frozen=True)
class Chart:
    """One chart; coordinates are SVG user units, written out as text."""

    key: str
    title: str
    unit: str
    peak: float | None
    average: float | None
    y_ticks: tuple[tuple[str, str], ...]  # (y, label)
    x_ticks: tuple[tuple[str, datetime, str], ...]  # (x, moment, text-anchor)
    time_format: str
    lines: tuple[ChartLine, ...]
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    plot_left: int = PLOT_LEFT
    plot_right: int = CHART_WIDTH - PLOT_RIGHT
    y_label_x: int = PLOT_LEFT - 6
    x_label_y: int = CHART_HEIGHT - 6


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k at or above ``value``."""
    if value <= 0:
        return 1
    scale = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * scale:
            return step * scale
    return 10 * scale


def telemetry_charts(telemetry: InstanceTelemetry) -> tuple[Chart, ...]:
    """Utilisation (%) and power (W) over time, one line per GPU, in SVG coordinates."""
    first, last = telemetry.first, telemetry.last
    span = (last - first).total_seconds()
    plot_width = CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT
    plot_height = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM

    def x_of(moment: datetime) -> float:
        if span <= 0:
            return PLOT_LEFT + plot_width / 2
        return PLOT_LEFT + plot_width * (moment - first).total_seconds() / span

    moments = [first + timedelta(seconds=span * i / 4) for i in range(5)] if span > 0 else [first]
    anchors = ["start", "middle", "middle", "middle", "end"] if span > 0 else ["middle"]
    x_ticks = tuple(
        (f"{x_of(moment):.1f}", moment, anchor)
        for moment, anchor in zip(moments, anchors, strict=True)
    )
    if span < 2 * 60:
        time_format = "H:i:s"
    elif span < 24 * 3600:
        time_format = "H:i"
    else:
        time_format = "M j, H:i"

    charts = []
    for key, title, unit, attribute, peak, average in (
        (
            "utilization",
            "GPU utilisation",
            "%",
            "utilization_pct",
            None,
            telemetry.average_utilization_pct,
        ),
        ("power", "Power draw", "W", "power_w", telemetry.peak_power_w, None),
    ):
        values = [
            getattr(p, attribute)
            for g in telemetry.gpus
            for segment in g.segments
            for p in segment
            if getattr(p, attribute) is not None
        ]
        top = 100 if key == "utilization" else nice_ceiling(max(values, default=0))
        if key == "utilization":
            peak = max(values, default=None)

        def y_of(value: float, top: float = top) -> float:
            return PLOT_TOP + plot_height * (1 - min(max(value / top, 0), 1))

        lines = []
        for gpu in telemetry.gpus:
            for segment in gpu.segments:
                coordinates = [
                    (x_of(p.time), y_of(getattr(p, attribute)))
                    for p in segment
                    if getattr(p, attribute) is not None
                ]
                if not coordinates:
                    continue
                lines.append(
                    ChartLine(
                        position=gpu.position,
                        color=COLORS[gpu.position % len(COLORS)],
                        points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates),
                        dot=(
                            (f"{coordinates[0][0]:.1f}", f"{coordinates[0][1]:.1f}")
                            if len(coordinates) == 1
                            else None
                        ),
                    )
                )
        charts.append(
            Chart(
                key=key,
                title=title,
                unit=unit,
                peak=peak,
                average=average,
                y_ticks=tuple((f"{y_of(top * f):.1f}", f"{top * f:g}") for f in (0, 0.5, 1)),
                x_ticks=x_ticks,
                time_format=time_format,
                lines=tuple(lines),
            )
        )
    return tuple(charts)


# --- the demo ---------------------------------------------------------------------------------

DEMO_INSTANCE = "h200-probe"


def replay_recorded(
    *, gpu: Gpu, start: datetime, path: Path = RECORDED_SAMPLES
) -> tuple[RecordResult, list[Sample]]:
    """Record a recorded run as readings of ``gpu`` from ``start`` on, in one batch."""
    samples = replay_samples(load_recording(path), gpu_uuid=gpu.uuid, start=start)
    return telemetry_record(samples=samples, host=gpu.host), samples


def _demo_type(host: Host, gpu: Gpu, organization):
    """The largest active one-GPU type of the GPU's model, sold in the host's region in the
    organisation's currency, that a launch would place on ``host`` now."""
    from portal.catalog import capacity
    from portal.catalog.models import InstanceType, Price

    sold = Price.objects.filter(
        region=host.region, currency=organization.currency, effective_from__lte=timezone.now()
    ).values("instance_type_id")
    candidates = InstanceType.objects.filter(
        gpu_model_id=gpu.gpu_model_id,
        gpu_count=1,
        mig_profile__isnull=True,
        is_active=True,
        vcpus__lte=host.vcpus,
        ram_gib__lte=host.ram_gib,
        pk__in=sold,
    ).order_by("-vcpus", "-ram_gib", "name")
    for instance_type in candidates:
        where = capacity.placement(instance_type=instance_type, region=host.region)
        if where is not None and where.host_id == host.pk:
            return instance_type
    return None


def demo_telemetry(*, organization) -> str:
    """For ``make run``: the real H200 run shown on an instance of the demo organisation.

    Finds the organisation's instance holding the GPU of the real one-GPU H200 host
    (``PROBE_HOST``: 16 vCPUs, 125 GiB), or launches one onto it if the GPU is free, with the
    largest one-GPU type that fits that host (the demo catalog needs one: the placement rules
    then put it there, as the host with the fewest free GPUs), and replays the recorded samples
    onto that GPU from the moment the instance took it. Safe to run again: the samples fall on
    the same moments and are kept once. Returns one line saying what it did.
    """
    from portal.accounts.models import SshKey
    from portal.accounts.types import Actor
    from portal.compute import services as compute_services
    from portal.compute.models import Instance

    skipped = "GPU telemetry demo skipped: "
    host = Host.objects.filter(name=PROBE_HOST).select_related("region").first()
    gpu = host.gpus.order_by("index").first() if host is not None else None
    if gpu is None:
        return skipped + f"no host {PROBE_HOST} with a GPU."
    claim = GpuSlotClaim.objects.filter(gpu=gpu).select_related("allocation").first()
    if claim is None:
        instance_type = _demo_type(host, gpu, organization)
        if instance_type is None:
            return skipped + (
                f"no active one-GPU {gpu.gpu_model} type sold in {host.region.code} in "
                f"{organization.currency} fits {PROBE_HOST} ({host.vcpus} vCPUs, "
                f"{host.ram_gib} GiB) and would be placed there."
            )
        key = SshKey.objects.filter(organization=organization).order_by("pk").first()
        try:
            instance, _ = compute_services.instance_launch(
                actor=Actor.system(organization),
                request=compute_services.LaunchRequest(
                    name=DEMO_INSTANCE,
                    instance_type=instance_type.name,
                    region=host.region.code,
                    ssh_key_ids=(key.pk,) if key is not None else (),
                ),
            )
        except PortalError as exc:
            reasons = exc.details.values() if isinstance(exc.details, dict) else ()
            return skipped + " ".join([exc.message, *map(str, reasons)])
        allocation = instance.allocation
    else:
        allocation = claim.allocation
        holder = allocation.holder.removeprefix("instance:")
        instance = Instance.objects.filter(
            pk=int(holder) if holder.isdigit() else None,
            organization=organization,
            instance_type__mig_profile__isnull=True,
        ).first()
        if instance is None:
            return skipped + f"the GPU of {PROBE_HOST} is held by something else."
    if allocation is None or not any(s.get("gpu") == gpu.uuid for s in allocation.gpu_slots):
        return skipped + f"{instance.name} does not hold the GPU of {PROBE_HOST}."
    result, samples = replay_recorded(gpu=gpu, start=allocation.created_at)
    energy = energy_text(counter_increase(s.energy_mj for s in samples))
    return (
        f"GPU telemetry: the recorded H200 run ({len(samples)} samples, {energy}) on "
        f"instance {instance.name} ({result.created} new)"
    )
