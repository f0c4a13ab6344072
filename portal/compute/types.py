"""Types other apps may use to plug into compute."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from portal.compute.models import Instance


class InstancePagePanel(Protocol):
    """A hook (settings.COMPUTE_INSTANCE_PAGE_PANELS) adding what another app shows on an
    instance's page, as template context (metering: the GPU telemetry panel). Compute imports
    none of those apps."""

    def __call__(self, instance: "Instance") -> dict[str, Any]: ...


@dataclass(frozen=True)
class FootprintChange:
    """What an organisation holds that is billed by the hour changed at ``at`` (one instance's
    state change, or a volume made or deleted), as differences:

    - ``running``: +1 / -1 when the instance starts or stops being billed for running time
      (``lifecycle.BILLED_RUNNING``), ``committed`` when it starts or stops running or being on
      its way to running (``BILLED_RUNNING | COMPUTE_COMING``); both at ``instance_type_id`` in
      ``region_id``;
    - ``billed_gb``: GB starting (+) or stopping (-) being billed for storage (a kept boot disk,
      ``lifecycle.DISK_KEPT``, or a volume); ``committed_gb`` the same for what is stored and
      not about to run (a starting instance's disk counts as its compute there).

    ``gpus`` is False for an instance in no-GPU mode (its running time is billed at the
    region's no-GPU price, not the type's). ``hourly_price`` is the price it runs at in the
    region and the organisation's currency now, when the caller read it already (a launch, a
    start), else None."""

    organization_id: int
    at: datetime
    instance_type_id: int | None = None
    region_id: int | None = None
    running: int = 0
    committed: int = 0
    billed_gb: int = 0
    committed_gb: int = 0
    hourly_price: Decimal | None = None
    gpus: bool = True

    @property
    def compute_changed(self) -> bool:
        return bool(self.running or self.committed)

    @property
    def billed_changed(self) -> bool:
        return bool(self.running or self.billed_gb)


class FootprintHook(Protocol):
    """A hook (settings.COMPUTE_FOOTPRINT_HOOKS) told, in the transaction of the change and
    under the organisation's lock, that what the organisation is billed for changed (billing
    keeps its burn figure with it)."""

    def __call__(self, change: FootprintChange) -> None: ...


@dataclass(frozen=True)
class GpuWindow:
    """What one physical GPU reported from ``start`` to ``end`` (``GpuWindowReader``), the
    window cut into buckets of ``bucket_seconds`` (the last may be shorter): how many samples,
    how many of them carry a utilisation reading, how many buckets hold at least one sample
    (``covered`` of ``buckets``), and the highest utilisation read."""

    samples: int
    readings: int
    covered: int
    buckets: int
    peak_utilization_pct: int | None


class GpuWindowReader(Protocol):
    """A hook (settings.COMPUTE_GPU_WINDOW_READER) that reads the GPUs' telemetry for the idle
    watch (metering keeps the samples; compute imports none of it). GPUs without a sample in
    the window are left out of the answer."""

    def __call__(
        self, *, gpu_ids: Sequence[int], start: datetime, end: datetime, bucket_seconds: int
    ) -> dict[int, GpuWindow]: ...
