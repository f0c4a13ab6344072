"""Writes about the catalog: GPU models, regions, instance types, prices, images and hosts.

Operators call these from admin and management commands; each runs in a transaction and writes
an audit row. Capacity (availability, placement, allocations) is in ``capacity.py``.
"""

import csv
import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django_countries import countries

from portal.accounts.models import Currency
from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.catalog.errors import CatalogErrorCode
from portal.catalog.models import (
    Gpu,
    GpuModel,
    Host,
    HostState,
    InstanceType,
    Interconnect,
    MigProfile,
    Price,
    Region,
)
from portal.catalog.reports import parse_mig_tables, parse_nvidia_smi_report
from portal.catalog.types import MigProfileReport
from portal.errors import Conflict, ErrorCode, InvalidInput

# Names other catalogs and nvidia-smi use for the GPUs in gpus.csv, keyed by (name, variant).
# Catalog accelerator names follow SkyPilot's canonical names.
GPU_ALIASES: dict[tuple[str, str], list[str]] = {
    ("H100", "SXM5 80GB"): ["H100", "H100-SXM", "H100-MEGA", "H100-80GB", "NVIDIA H100 80GB HBM3"],
    ("H100", "PCIe 80GB"): ["H100-PCIE", "NVIDIA H100 PCIe"],
    ("H100", "NVL 94GB"): ["H100-NVL", "NVIDIA H100 NVL"],
    ("H200", "SXM 141GB"): ["H200", "H200-SXM", "NVIDIA H200"],
    ("GH200", "Grace Hopper 96GB"): ["GH200", "NVIDIA GH200 480GB"],
    ("B200", "HGX B200 (per GPU)"): ["B200", "NVIDIA B200"],
    ("A100", "SXM4 40GB"): ["A100", "A100-40GB", "NVIDIA A100-SXM4-40GB"],
    ("A100", "SXM4 80GB"): ["A100-80GB", "A100-80GB-SXM", "NVIDIA A100-SXM4-80GB"],
    ("A100", "PCIe 80GB"): ["A100-80GB-PCIE", "NVIDIA A100 80GB PCIe"],
    ("L40S", "PCIe 48GB"): ["L40S", "NVIDIA L40S"],
    ("L4", "PCIe 24GB"): ["L4", "NVIDIA L4"],
    ("A10", "PCIe 24GB"): ["A10", "NVIDIA A10"],
    ("RTX 6000 Ada", "PCIe 48GB"): [
        "RTX6000-Ada",
        "RTX-6000-Ada",
        "NVIDIA RTX 6000 Ada Generation",
    ],
    ("MI300X", "OAM 192GB"): ["MI300X"],
}
MIG_CAPABLE = {"A100", "H100", "H200", "GH200", "B200"}


def _system_actor(actor: Actor | None) -> Actor:
    return actor or Actor(user=None, organization=None, role=None)


def _decimal(value, field: str, code: str = ErrorCode.INVALID) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(
            _("%(field)s '%(value)s' is not a number.") % {"field": field, "value": value},
            code=code,
        ) from None
    if not number.is_finite():
        raise InvalidInput(
            _("%(field)s '%(value)s' is not a finite number.") % {"field": field, "value": value},
            code=code,
        )
    return number


def _code(name: str, variant: str) -> str:
    from django.utils.text import slugify

    return slugify(f"{name} {variant}".replace("(per GPU)", ""))[:40]


# --- GPU models -------------------------------------------------------------------------------


@transaction.atomic  # also inside the demo catalog's transaction
def gpu_models_load(*, path: Path) -> int:
    """Create or update GPU models from a gpus.csv file; returns how many rows were read."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows, start=2):
        try:
            name, variant = row["gpu"].strip(), row["variant"].strip()
            fields = {
                "code": _code(name, variant),
                "vendor": row["vendor"].strip(),
                "architecture": row["architecture"].strip(),
                "memory_gb": int(row["memory_gb"]),
                "memory_type": row["memory_type"].strip(),
                "memory_bandwidth_gb_s": int(row["memory_bandwidth_gb_s"]),
                "bf16_tflops": Decimal(row["fp16_bf16_tensor_tflops_dense"]),
                "tdp_w": int(row["tdp_w"]),
                "interconnect": row["gpu_interconnect"].strip(),
                "interconnect_gb_s": int(row["gpu_interconnect_gb_s"] or 0) or None,
                "mig_capable": name in MIG_CAPABLE and row["vendor"].strip() == "NVIDIA",
                "aliases": GPU_ALIASES.get((name, variant), []),
            }
        except (KeyError, ValueError, InvalidOperation) as exc:
            raise InvalidInput(
                _("%(file)s line %(line)s: %(error)r")
                % {"file": path.name, "line": number, "error": exc},
                code=ErrorCode.INVALID,
            ) from None
        GpuModel.objects.update_or_create(name=name, variant=variant, defaults=fields)
    return len(rows)


def gpu_model_index() -> dict[str, GpuModel]:
    """Every alias, name and code of every GPU model, upper-cased, to its model."""
    index: dict[str, GpuModel] = {}
    for model in GpuModel.objects.all():
        for key in [model.code, *model.aliases]:
            index.setdefault(key.upper(), model)
    return index


# --- regions, instance types, prices ----------------------------------------------------------


def region_ensure(*, code: str, name: str = "", country: str = "") -> Region:
    """The region with this code, created if new; name and country fill in blanks only."""
    code = (code or "").strip()
    if not code:
        raise InvalidInput(_("A region needs a code."), code=CatalogErrorCode.REGION_INVALID)
    if country and countries.alpha2(country) != country.upper():
        raise InvalidInput(
            _("Country '%(country)s' is not an ISO 3166 code.") % {"country": country},
            code=CatalogErrorCode.COUNTRY_INVALID,
        )
    region, created = Region.objects.get_or_create(
        code=code, defaults={"name": name or code, "country": country.upper()}
    )
    changed = []
    if not created and name and region.name in ("", region.code) and name != region.name:
        region.name = name
        changed.append("name")
    if not created and country and not region.country:
        region.country = country.upper()
        changed.append("country")
    if changed:
        region.save(update_fields=changed)
    return region


@transaction.atomic
def instance_type_upsert(
    *,
    name: str,
    gpu_model: GpuModel,
    gpu_count: int,
    vcpus: int,
    ram_gib: int,
    mig_profile: MigProfile | None = None,
    local_nvme_gb: int | None = None,
    interconnect: str | None = None,
    spot_allowed: bool = False,
    description: str | None = None,
    provider: str = "",
    provider_name: str = "",
) -> tuple[InstanceType, bool]:
    """Create or update an instance type. Returns (type, created).

    An imported type is found by (provider, provider_name); a hand-made one by name. A name
    already used by another product gets the provider as a prefix. On update, ``local_nvme_gb``,
    ``interconnect`` and ``description`` left as None keep what operators set.
    """
    if mig_profile is not None:
        if mig_profile.gpu_model_id != gpu_model.pk:
            raise InvalidInput(
                _("MIG profile %(profile)s is not a profile of %(model)s.")
                % {"profile": mig_profile, "model": gpu_model},
                code=CatalogErrorCode.INSTANCE_TYPE_INVALID,
            )
        gpu_count = 1
    if gpu_count < 1 or vcpus < 1 or ram_gib < 1:
        raise InvalidInput(
            _("Instance type %(name)s: GPUs, vCPUs and RAM must be at least 1.") % {"name": name},
            code=CatalogErrorCode.INSTANCE_TYPE_INVALID,
        )
    fields = {
        "gpu_model": gpu_model,
        "gpu_count": gpu_count,
        "mig_profile": mig_profile,
        "vcpus": vcpus,
        "ram_gib": ram_gib,
        "spot_allowed": spot_allowed,
    }
    if local_nvme_gb is not None:
        fields["local_nvme_gb"] = local_nvme_gb
    if interconnect is not None:
        fields["interconnect"] = interconnect
    if description is not None:
        fields["description"] = description[:200]
    if provider:
        existing = InstanceType.objects.filter(
            provider=provider, provider_name=provider_name
        ).first()
    else:
        existing = InstanceType.objects.filter(name=name, provider="").first()
    if existing is None:
        if InstanceType.objects.filter(name=name).exists():
            # The same name already means another product (another catalog, or hand-made).
            name = f"{provider or 'custom'}_{name}"[:60]
            if InstanceType.objects.filter(name=name).exists():
                raise Conflict(
                    _("The instance type name '%(name)s' is taken.") % {"name": name},
                    code=CatalogErrorCode.INSTANCE_TYPE_EXISTS,
                )
        if interconnect is None:
            pcie = "PCIe" in gpu_model.variant or "none" in gpu_model.interconnect.lower()
            single = gpu_count == 1 or mig_profile is not None
            fields["interconnect"] = Interconnect.PCIE if (single or pcie) else Interconnect.NVLINK
        instance_type = InstanceType.objects.create(
            name=name, provider=provider, provider_name=provider_name, **fields
        )
        return instance_type, True
    changed = [key for key, value in fields.items() if getattr(existing, key) != value]
    for key in changed:
        setattr(existing, key, fields[key])
    if changed:
        existing.save(update_fields=changed)
    return existing, False


# A price may start a little before "now" (clock skew, a slow form); never earlier.
PRICE_BACKDATE_TOLERANCE = timedelta(minutes=5)


def price_in_force(
    *, instance_type: InstanceType, region: Region, currency: str, at: datetime | None = None
) -> Price | None:
    return (
        Price.objects.filter(
            instance_type=instance_type,
            region=region,
            currency=currency,
            effective_from__lte=at or timezone.now(),
        )
        .order_by("-effective_from")
        .first()
    )


@transaction.atomic
def price_set(
    *,
    instance_type: InstanceType,
    region: Region,
    currency: str,
    on_demand_per_hour,
    spot_per_hour=None,
    effective_from: datetime | None = None,
    actor: Actor | None = None,
    allow_past: bool = False,
) -> tuple[Price, bool]:
    """Schedule a price (now when ``effective_from`` is empty). Returns (price, created).

    Setting the price already in force at that moment changes nothing, so re-running an
    import never duplicates.
    """
    if not currency:
        raise InvalidInput(
            _("The price of %(type)s in %(region)s has no currency.")
            % {"type": instance_type, "region": region},
            code=CatalogErrorCode.PRICE_INVALID,
        )
    if currency not in Currency.values:
        raise InvalidInput(
            _("Currency '%(currency)s' is not one of %(currencies)s.")
            % {"currency": currency, "currencies": ", ".join(Currency.values)},
            code=CatalogErrorCode.PRICE_INVALID,
        )
    on_demand = _decimal(on_demand_per_hour, "On-demand price", CatalogErrorCode.PRICE_INVALID)
    spot = _decimal(spot_per_hour, "Spot price", CatalogErrorCode.PRICE_INVALID)
    if on_demand is None or on_demand <= 0:
        raise InvalidInput(
            _("The on-demand price of %(type)s in %(region)s must be positive, not %(price)s.")
            % {"type": instance_type, "region": region, "price": on_demand},
            code=CatalogErrorCode.PRICE_INVALID,
        )
    if spot is not None and spot <= 0:
        raise InvalidInput(
            _("The spot price of %(type)s in %(region)s must be positive, not %(price)s.")
            % {"type": instance_type, "region": region, "price": spot},
            code=CatalogErrorCode.PRICE_INVALID,
        )
    if on_demand.as_tuple().exponent < -6 or (spot is not None and spot.as_tuple().exponent < -6):
        raise InvalidInput(
            _("Prices have at most 6 decimal places."), code=CatalogErrorCode.PRICE_INVALID
        )
    now = timezone.now()
    effective_from = effective_from or now
    if not allow_past and effective_from < now - PRICE_BACKDATE_TOLERANCE:
        raise InvalidInput(
            _(
                "A price cannot start in the past: usage already rated would change. "
                "Schedule it from now or later."
            ),
            code=CatalogErrorCode.PRICE_INVALID,
            details={"field": "effective_from"},
        )
    current = price_in_force(
        instance_type=instance_type, region=region, currency=currency, at=effective_from
    )
    if (
        current is not None
        and current.on_demand_per_hour == on_demand
        and current.spot_per_hour == spot
    ):
        return current, False
    if Price.objects.filter(
        instance_type=instance_type, region=region, currency=currency, effective_from=effective_from
    ).exists():
        raise Conflict(
            _(
                "Another %(currency)s price of %(type)s in %(region)s starts at exactly that "
                "moment (%(moment)s). Pick another time."
            )
            % {
                "currency": currency,
                "type": instance_type,
                "region": region,
                "moment": f"{effective_from:%Y-%m-%d %H:%M:%S}",
            },
            code=CatalogErrorCode.PRICE_EXISTS,
            details={"field": "effective_from"},
        )
    price = Price.objects.create(
        instance_type=instance_type,
        region=region,
        currency=currency,
        on_demand_per_hour=on_demand,
        spot_per_hour=spot,
        effective_from=effective_from,
    )
    audit_record(
        actor=_system_actor(actor),
        action="price.set",
        target=price,
        details={
            "on_demand": str(on_demand),
            "spot": str(spot),
            "from": effective_from.isoformat(),
        },
    )
    return price, True


# --- hosts ------------------------------------------------------------------------------------


def _mig_profiles_ensure(gpu_model: GpuModel, reports: tuple[MigProfileReport, ...]) -> None:
    for report in reports:
        MigProfile.objects.update_or_create(
            gpu_model=gpu_model,
            name=report.name,
            defaults={
                "profile_id": report.profile_id,
                "memory_gib": report.memory_gib,
                "compute_slices": report.compute_slices,
                "memory_slots": report.memory_slots,
                "placements": list(report.placements),
                "max_instances": report.max_instances,
                "sm_count": report.sm_count,
            },
        )


HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")


def _check_mig_tables(
    model: GpuModel, memory_mib: int, profiles: tuple[MigProfileReport, ...]
) -> None:
    """The tables must belong to this GPU, and may not rewrite profiles already registered."""
    largest = max(p.memory_gib for p in profiles)
    gpu_gib = Decimal(memory_mib) / 1024
    if not gpu_gib * Decimal("0.9") <= largest <= gpu_gib:
        raise InvalidInput(
            _(
                "These MIG tables are not for a %(model)s: their largest profile has "
                "%(largest)s GiB, the GPU %(gpu)s GiB."
            )
            % {"model": model, "largest": largest, "gpu": f"{gpu_gib:.1f}"},
            code=CatalogErrorCode.REPORT_INVALID,
            details={"field": "mig_tables"},
        )
    known = {p.name: p for p in MigProfile.objects.filter(gpu_model=model)}
    for report in profiles:
        existing = known.get(report.name)
        if existing is not None and (
            list(existing.placements) != list(report.placements)
            or existing.memory_slots != report.memory_slots
        ):
            raise Conflict(
                _(
                    "MIG profile %(profile)s of %(model)s is registered with other placements; "
                    "refusing to change it under running instances."
                )
                % {"profile": report.name, "model": model},
                code=CatalogErrorCode.MIG_PROFILES_DIFFER,
            )


def host_register(**kwargs) -> Host:
    """Register a GPU host (see ``_host_register``); a concurrent registration of the same
    name or GPU is a conflict, not a database error."""
    try:
        return _host_register(**kwargs)
    except IntegrityError:
        raise Conflict(
            _("This host or one of its GPUs was registered at the same moment."),
            code=CatalogErrorCode.HOST_EXISTS,
        ) from None


@transaction.atomic  # also inside the demo catalog's transaction
def _host_register(
    *,
    name: str,
    region: Region,
    report: bytes | str,
    vcpus: int,
    ram_gib: int,
    disk_gb: int = 0,
    mig_tables: str | None = None,
    actor: Actor | None = None,
) -> Host:
    """Register a GPU host from its ``nvidia-smi -q -x`` report (and MIG tables, if any).

    Every GPU must be a known GPU model and its UUID new. MIG-capable GPUs whose model has MIG
    profiles may be sold as slices (``mig_enabled``); operators can change that in admin.
    Nothing is written unless everything is valid.
    """
    parsed = parse_nvidia_smi_report(report)
    name = (name or "").strip()
    if not HOST_NAME.match(name):
        raise InvalidInput(
            _("A host name is 1 to 80 letters, digits, hyphens and underscores."),
            code=CatalogErrorCode.HOST_INVALID,
        )
    if disk_gb < 0:
        raise InvalidInput(_("Disk size cannot be negative."), code=CatalogErrorCode.HOST_INVALID)
    if Host.objects.filter(name=name).exists():
        raise Conflict(
            _("A host named '%(name)s' is already registered.") % {"name": name},
            code=CatalogErrorCode.HOST_EXISTS,
        )
    if vcpus < 1 or ram_gib < 1:
        raise InvalidInput(
            _("vCPUs and RAM must be at least 1."), code=CatalogErrorCode.HOST_INVALID
        )
    index = gpu_model_index()
    models_by_gpu = {}
    for gpu in parsed.gpus:
        model = index.get(gpu.product_name.upper())
        if model is None:
            raise InvalidInput(
                _(
                    "GPU %(index)s (%(bus)s) is a '%(product)s', which is not a known GPU model. "
                    "Add it (or an alias) to the GPU models first."
                )
                % {"index": gpu.index, "bus": gpu.pci_bus_id, "product": gpu.product_name},
                code=CatalogErrorCode.GPU_UNKNOWN,
                details={"product_name": gpu.product_name},
            )
        models_by_gpu[gpu.uuid] = model
    taken = (
        Gpu.objects.filter(uuid__in=[g.uuid for g in parsed.gpus]).select_related("host").first()
    )
    if taken is not None:
        raise Conflict(
            _("GPU %(uuid)s is already registered on host %(host)s.")
            % {"uuid": taken.uuid, "host": taken.host.name},
            code=CatalogErrorCode.GPU_DUPLICATE,
            details={"uuid": taken.uuid},
        )
    if mig_tables:
        profiles = parse_mig_tables(mig_tables)
        for gpu in parsed.gpus:
            model = models_by_gpu[gpu.uuid]
            if model.mig_capable:
                _check_mig_tables(model, gpu.memory_mib, profiles)
        for model in {m for m in models_by_gpu.values() if m.mig_capable}:
            _mig_profiles_ensure(model, profiles)
    host = Host.objects.create(
        name=name,
        region=region,
        vcpus=vcpus,
        ram_gib=ram_gib,
        disk_gb=disk_gb,
        driver_version=parsed.driver_version,
        cuda_version=parsed.cuda_version,
    )
    with_profiles = set(
        MigProfile.objects.filter(gpu_model__in=set(models_by_gpu.values())).values_list(
            "gpu_model_id", flat=True
        )
    )
    Gpu.objects.bulk_create(
        Gpu(
            host=host,
            index=gpu.index,
            uuid=gpu.uuid,
            pci_bus_id=gpu.pci_bus_id,
            gpu_model=models_by_gpu[gpu.uuid],
            memory_mib=gpu.memory_mib,
            # Sold as MIG slices when the report says MIG is on, or the operator registered the
            # host with its MIG tables (meaning: slice it); otherwise whole GPUs only.
            mig_enabled=models_by_gpu[gpu.uuid].pk in with_profiles
            and (gpu.mig_mode or bool(mig_tables)),
        )
        for gpu in parsed.gpus
    )
    audit_record(
        actor=_system_actor(actor),
        action="host.register",
        target=host,
        details={"gpus": len(parsed.gpus), "region": region.code},
    )
    return host


@transaction.atomic  # admin sets several hosts in one transaction
def host_set_state(*, host: Host, state: str, actor: Actor | None = None) -> Host:
    """Drain (no new instances), take offline, or activate a host."""
    if state not in HostState.values:
        raise InvalidInput(
            _("State must be one of %(states)s.") % {"states": ", ".join(HostState.values)},
            code=CatalogErrorCode.HOST_INVALID,
        )
    host = Host.objects.select_for_update().get(pk=host.pk)
    if host.state != state:
        previous = host.state
        host.state = state
        host.save(update_fields=["state"])
        audit_record(
            actor=_system_actor(actor),
            action="host.set_state",
            target=host,
            details={"from": previous, "to": state},
        )
    return host


@transaction.atomic(durable=True)
def gpus_set_mig(*, gpus: QuerySet[Gpu], enabled: bool, actor: Actor) -> tuple[list, list]:
    """Allow (or stop) selling GPUs as MIG slices. Returns (changed GPUs, refusals).

    Locks the GPUs' hosts in id order, as ``allocation_reserve`` does, so no placement races the change; a GPU with any
    slot claimed is left alone (its mode cannot change while it is in use), and MIG is only
    enabled on a model that has MIG profiles.
    """
    gpu_ids = list(gpus.values_list("pk", flat=True))
    host_ids = Gpu.objects.filter(pk__in=gpu_ids).values("host_id")
    list(Host.objects.select_for_update().filter(pk__in=host_ids).order_by("pk"))
    rows = (
        Gpu.objects.filter(pk__in=gpu_ids)
        .select_related("host", "gpu_model")
        .annotate(claimed=Count("claims"))
        .order_by("host__name", "index")
    )
    with_profiles = set(MigProfile.objects.values_list("gpu_model_id", flat=True).distinct())
    changed, refused = [], []
    for gpu in rows:
        label = f"GPU {gpu.index} of {gpu.host.name}"
        if gpu.mig_enabled == enabled:
            continue
        if gpu.claimed:
            refused.append(
                f"{label} is in use ({gpu.claimed} slots claimed); drain its host and wait "
                "until its instances are gone."
            )
            continue
        if enabled and gpu.gpu_model_id not in with_profiles:
            refused.append(
                f"{label}: {gpu.gpu_model} has no MIG profiles (register a host of this model "
                "with its MIG tables)."
            )
            continue
        gpu.mig_enabled = enabled
        gpu.save(update_fields=["mig_enabled"])
        audit_record(
            actor=actor,
            action="gpu.set_mig",
            target=gpu,
            details={"mig_enabled": enabled, "host": gpu.host.name, "uuid": gpu.uuid},
        )
        changed.append(gpu)
    return changed, refused
