"""What the cloud sells and what it is built from.

- GPU models (public specifications) and their MIG profiles;
- regions, instance types (whole GPUs or one MIG slice), prices per region and currency with an
  effective-from time, and images;
- hosts with their GPUs, and the capacity held on them (allocations and the GPU memory slots
  they claim).

Writes go through ``portal.catalog.services``; availability and placement live in
``portal.catalog.capacity``.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_countries.fields import CountryField

from portal.accounts.models import Currency
from portal.tax import tax_code_field, tax_constraints, vat_rate_field

# Money: prices per hour at full precision (rated, never rounded here).
PRICE_MAX_DIGITS = 14
PRICE_DECIMAL_PLACES = 6

# MIG-capable GPUs (A100, H100, H200) split their memory into 8 slices. A whole-GPU allocation
# claims all 8; a MIG GPU instance claims the slices of its placement. A unique constraint on
# (GPU, slot) makes double-selling impossible in the database itself.
GPU_MEMORY_SLOTS = 8


class GpuModel(models.Model):
    """A GPU product with its public specifications (seeded from the catalog's gpus.csv)."""

    code = models.SlugField(max_length=40, unique=True, help_text=_("e.g. h100-sxm5-80gb"))
    name = models.CharField(max_length=40, help_text="e.g. H100")
    variant = models.CharField(max_length=60, blank=True, help_text="e.g. SXM5 80GB")
    vendor = models.CharField(max_length=20, default="NVIDIA")
    architecture = models.CharField(max_length=40, blank=True)
    memory_gb = models.PositiveIntegerField()
    memory_type = models.CharField(max_length=30, blank=True)
    memory_bandwidth_gb_s = models.PositiveIntegerField(null=True, blank=True)
    bf16_tflops = models.DecimalField(
        "BF16 TFLOPS (dense)", max_digits=8, decimal_places=1, null=True, blank=True
    )
    tdp_w = models.PositiveIntegerField("TDP (W)", null=True, blank=True)
    interconnect = models.CharField(max_length=80, blank=True)
    interconnect_gb_s = models.PositiveIntegerField(null=True, blank=True)
    mig_capable = models.BooleanField(default=False)
    aliases = models.JSONField(
        default=list,
        blank=True,
        help_text=_(
            "Other names for this GPU: catalog accelerator names (A100-80GB) and "
            "nvidia-smi product names (NVIDIA H100 80GB HBM3). Matched without case."
        ),
    )

    class Meta:
        ordering = ["name", "variant"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "variant"], name="catalog_gpumodel_name_variant_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.variant}".strip()


class MigProfile(models.Model):
    """A MIG GPU-instance profile of a GPU model, from ``nvidia-smi mig -lgip`` / ``-lgipp``."""

    gpu_model = models.ForeignKey(GpuModel, on_delete=models.CASCADE, related_name="mig_profiles")
    name = models.CharField(max_length=20, help_text=_("e.g. 1g.18gb"))
    profile_id = models.PositiveSmallIntegerField()
    memory_gib = models.DecimalField(max_digits=7, decimal_places=2)
    compute_slices = models.PositiveSmallIntegerField(help_text=_("The Ng in the name."))
    memory_slots = models.PositiveSmallIntegerField(
        help_text=_("Memory slices one instance occupies.")
    )
    placements = models.JSONField(help_text=_("Allowed start slots, e.g. [0, 2, 4]."))
    max_instances = models.PositiveSmallIntegerField()
    sm_count = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["gpu_model", "-memory_slots", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["gpu_model", "name"], name="catalog_migprofile_name_unique"
            ),
            models.CheckConstraint(
                condition=Q(memory_slots__gte=1, memory_slots__lte=GPU_MEMORY_SLOTS),
                name="catalog_migprofile_slots_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_model.name} {self.name}"


class Region(models.Model):
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    country = CountryField(blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Interconnect(models.TextChoices):
    PCIE = "pcie", "PCIe"
    NVLINK = "nvlink", "NVLink"
    INFINIBAND = "infiniband", "NVLink + InfiniBand"


class InstanceType(models.Model):
    """What one instance gets: whole GPUs of one model, or one MIG slice of one GPU."""

    name = models.SlugField(
        max_length=60, unique=True, help_text=_("Stable, e.g. gpu_8x_h100_sxm5.")
    )
    description = models.CharField(max_length=200, blank=True)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="instance_types")
    gpu_count = models.PositiveSmallIntegerField(help_text=_("Whole GPUs; 1 for a MIG slice."))
    mig_profile = models.ForeignKey(
        MigProfile, null=True, blank=True, on_delete=models.PROTECT, related_name="instance_types"
    )
    vcpus = models.PositiveSmallIntegerField()
    ram_gib = models.PositiveIntegerField()
    local_nvme_gb = models.PositiveIntegerField(default=0)
    interconnect = models.CharField(
        max_length=12, choices=Interconnect.choices, default=Interconnect.PCIE
    )
    spot_allowed = models.BooleanField(
        default=False, help_text=_("May run as interruptible (spot).")
    )
    is_active = models.BooleanField(default=True)
    provider = models.CharField(
        max_length=40, blank=True, help_text=_("Catalog it was imported from.")
    )
    provider_name = models.CharField(max_length=80, blank=True)
    tax_code = tax_code_field()
    vat_rate = vat_rate_field()

    class Meta:
        ordering = ["gpu_model__name", "gpu_count", "name"]
        constraints = [
            *tax_constraints("catalog_instancetype"),
            models.CheckConstraint(
                condition=Q(mig_profile__isnull=True, gpu_count__gte=1)
                | Q(mig_profile__isnull=False, gpu_count=1),
                name="catalog_instancetype_gpus_or_one_slice",
            ),
            models.CheckConstraint(
                condition=Q(interconnect__in=Interconnect.values),
                name="catalog_instancetype_interconnect_valid",
            ),
            models.UniqueConstraint(
                fields=["provider", "provider_name"],
                condition=~Q(provider=""),
                name="catalog_instancetype_provider_name_unique",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_mig(self) -> bool:
        return self.mig_profile_id is not None

    @property
    def gpu_memory_gb(self) -> float:
        """Total GPU memory one instance gets."""
        if self.mig_profile is not None:
            return float(self.mig_profile.memory_gib)
        return float(self.gpu_model.memory_gb * self.gpu_count)


class Price(models.Model):
    """An hourly price of a type in a region and currency, in force from ``effective_from``.

    The price in force at a moment is the one with the latest ``effective_from`` at or before
    it, so a change is scheduled by adding a row with a future time. Rows are never edited.
    """

    instance_type = models.ForeignKey(InstanceType, on_delete=models.CASCADE, related_name="prices")
    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="prices")
    currency = models.CharField(max_length=3, choices=Currency.choices)
    on_demand_per_hour = models.DecimalField(
        max_digits=PRICE_MAX_DIGITS, decimal_places=PRICE_DECIMAL_PLACES
    )
    spot_per_hour = models.DecimalField(
        max_digits=PRICE_MAX_DIGITS, decimal_places=PRICE_DECIMAL_PLACES, null=True, blank=True
    )
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["instance_type", "region", "currency", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance_type", "region", "currency", "effective_from"],
                name="catalog_price_one_per_moment",
            ),
            models.CheckConstraint(
                condition=Q(on_demand_per_hour__gt=0), name="catalog_price_positive"
            ),
            models.CheckConstraint(
                condition=Q(spot_per_hour__isnull=True) | Q(spot_per_hour__gt=0),
                name="catalog_price_spot_positive",
            ),
            models.CheckConstraint(
                condition=Q(currency__in=Currency.values), name="catalog_price_currency_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["currency", "effective_from"], name="catalog_price_cur_from")
        ]

    def __str__(self) -> str:
        return f"{self.instance_type} {self.region} {self.on_demand_per_hour} {self.currency}/h"


class Image(models.Model):
    """A boot image: OS with CUDA, driver and frameworks."""

    name = models.SlugField(max_length=80, unique=True)
    description = models.CharField(max_length=200, blank=True)
    os = models.CharField(max_length=40, help_text="e.g. Ubuntu 24.04")
    cuda_version = models.CharField(max_length=20, blank=True)
    driver_version = models.CharField(max_length=20, blank=True)
    frameworks = models.JSONField(default=list, blank=True, help_text='e.g. ["PyTorch 2.9"]')
    instance_types = models.ManyToManyField(
        InstanceType, blank=True, related_name="images", help_text=_("Leave empty for every type.")
    )
    is_default = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="catalog_image_one_default",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class HostState(models.TextChoices):
    ACTIVE = "active", _("Active")
    DRAINING = "draining", _("Draining")
    OFFLINE = "offline", _("Offline")


class Host(models.Model):
    """A GPU server in a region. Only active hosts take new instances."""

    name = models.SlugField(max_length=80, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="hosts")
    state = models.CharField(max_length=10, choices=HostState.choices, default=HostState.ACTIVE)
    vcpus = models.PositiveIntegerField()
    ram_gib = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    driver_version = models.CharField(max_length=20, blank=True)
    cuda_version = models.CharField(max_length=20, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    managed_by = models.CharField(
        max_length=40,
        blank=True,
        help_text=_(
            "The provisioning backend whose inventory this host mirrors (e.g. slurm); "
            "empty for a host an operator registered."
        ),
    )

    class Meta:
        ordering = ["region", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=HostState.values), name="catalog_host_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Gpu(models.Model):
    """One physical GPU of a host, as its ``nvidia-smi -q -x`` report names it."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField(help_text=_("nvidia-smi minor number."))
    uuid = models.CharField(max_length=60, unique=True)
    pci_bus_id = models.CharField(max_length=20)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="gpus")
    memory_mib = models.PositiveIntegerField()
    mig_enabled = models.BooleanField(default=False, help_text=_("May be split into MIG slices."))

    class Meta:
        ordering = ["host", "index"]
        constraints = [
            models.UniqueConstraint(fields=["host", "index"], name="catalog_gpu_host_index_unique"),
            models.UniqueConstraint(
                fields=["host", "pci_bus_id"], name="catalog_gpu_host_bus_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.host.name} GPU {self.index} ({self.uuid})"


class Allocation(models.Model):
    """Capacity held on a host for one instance: vCPUs, RAM and GPU memory slots.

    Active while ``released_at`` is empty. Its ``GpuSlotClaim`` rows are deleted on release;
    ``gpu_slots`` keeps what it held, for history.
    """

    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="allocations")
    # Empty for GPUs the engine reports in use by work outside the portal (Slurm jobs of the
    # centre's other users), held so the portal never sells them.
    instance_type = models.ForeignKey(
        InstanceType, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    vcpus = models.PositiveSmallIntegerField()
    ram_gib = models.PositiveIntegerField()
    gpu_slots = models.JSONField(
        default=list, help_text=_('[{"gpu": uuid, "start": 0, "size": 8}]')
    )
    holder = models.CharField(max_length=80, help_text=_("What holds it, e.g. instance:42."))
    created_at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["host"], condition=Q(released_at__isnull=True), name="catalog_alloc_active"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["holder"],
                condition=Q(released_at__isnull=True),
                name="catalog_alloc_one_active_per_holder",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instance_type or 'GPUs'} on {self.host} for {self.holder}"


class GpuSlotClaim(models.Model):
    """One memory slot of one GPU, held by an active allocation. Unique per (GPU, slot)."""

    gpu = models.ForeignKey(Gpu, on_delete=models.PROTECT, related_name="claims")
    slot = models.PositiveSmallIntegerField()
    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="claims")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu", "slot"], name="catalog_claim_gpu_slot_unique"),
            models.CheckConstraint(
                condition=Q(slot__lt=GPU_MEMORY_SLOTS), name="catalog_claim_slot_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu} slot {self.slot}"


class CatalogVersion(models.Model):
    """The catalog's version on databases without sequences (SQLite): one row, counted up on
    every change of what the catalog shows. PostgreSQL counts with the ``catalog_version``
    sequence instead (see ``portal.catalog.cache``)."""

    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"catalog version {self.value}"
