"""Frozen dataclasses other apps may import: parsed host reports, offers and placements."""

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class GpuReport:
    """One ``<gpu>`` of an ``nvidia-smi -q -x`` report."""

    index: int
    uuid: str
    pci_bus_id: str
    product_name: str
    memory_mib: int
    mig_mode: bool
    architecture: str = ""


@dataclass(frozen=True)
class HostReport:
    driver_version: str
    cuda_version: str
    gpus: tuple[GpuReport, ...]


@dataclass(frozen=True)
class MigProfileReport:
    """One row of ``nvidia-smi mig -lgip`` joined with its ``-lgipp`` placements."""

    name: str
    profile_id: int
    memory_gib: Decimal
    max_instances: int
    sm_count: int | None
    placements: tuple[int, ...]
    memory_slots: int

    @property
    def compute_slices(self) -> int:
        return int(self.name.split("g.", 1)[0])


@dataclass(frozen=True)
class GpuSlot:
    """Part of a GPU: all of it (``start=0, size=8``) or one MIG placement."""

    gpu_id: int
    gpu_uuid: str
    start: int
    size: int


@dataclass(frozen=True)
class Placement:
    """Where a launch would go: a host, and the GPUs or MIG slot it would take."""

    host_id: int
    host_name: str
    slots: tuple[GpuSlot, ...]


@dataclass(frozen=True)
class CpuShape:
    """What a CPU-only allocation holds on a host (an instance started without its GPUs)."""

    vcpus: int
    ram_gib: int


@dataclass(frozen=True)
class PriceQuote:
    region: str
    currency: str
    on_demand_per_hour: Decimal
    spot_per_hour: Decimal | None


@dataclass(frozen=True)
class Offer:
    """An instance type as the catalog shows it: specs, prices in one currency, availability."""

    instance_type_id: int
    name: str
    description: str
    gpu_model: str
    gpu_model_code: str
    gpu_count: int
    mig_profile: str | None
    gpu_memory_gb: float
    vcpus: int
    ram_gib: int
    local_nvme_gb: int
    interconnect: str
    spot_allowed: bool
    bf16_tflops: Decimal | None
    currency: str
    prices: tuple[PriceQuote, ...]
    available: dict[str, int] = field(default_factory=dict)

    @property
    def regions_with_capacity(self) -> list[str]:
        return sorted(code for code, n in self.available.items() if n > 0)

    @property
    def sold_out(self) -> bool:
        return not self.regions_with_capacity
