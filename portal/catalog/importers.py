"""Import a SkyPilot catalog ``vms.csv`` (one cloud's instance types and prices) into the catalog.

Every write goes through ``portal.catalog.services``: ``instance_type_upsert``,
``region_ensure`` and ``price_set``, all inside one transaction, so a file is imported whole or
not at all. Rows that cannot become an instance type with a price are reported in
``ImportResult.unmapped``, never dropped silently.

How rows become types and prices:

- rows are grouped by (``InstanceType``, ``Region``): one instance type per ``InstanceType``
  (``provider_name`` keeps the original text) and one price per type and region. AWS, GCP and
  RunPod list a row per availability zone; the region's on-demand price is the lowest of them
  and its spot price the lowest positive one (none when there is none).
- ``AcceleratorName`` is looked up in ``services.gpu_model_index()`` (aliases, no case). The
  variant is refined when the instance or accelerator name says ``pcie`` or ``nvl`` and the
  GPU has such a variant, and when the file names both ``X`` and ``X-SXM``: there the plain
  ``X`` is the PCIe card (RunPod's ``H100`` and ``A100-80GB``).
- a row is reported, with the first reason that applies, when it has no ``InstanceType``
  (GCP's separately priced accelerators), no usable on-demand price, no accelerator (a CPU
  type, or a GCP ``a2``/``a3``/``a4`` VM whose GPUs are priced separately), an unknown
  accelerator, a GPU count that is not a whole positive number, unusable vCPUs or memory, no
  region, or specs that differ from the type's first row.
"""

import csv
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from portal.accounts.models import Currency
from portal.accounts.types import Actor
from portal.catalog import services
from portal.catalog.errors import CatalogErrorCode
from portal.catalog.models import GpuModel, InstanceType, Region
from portal.errors import InvalidInput

REQUIRED_COLUMNS = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "Price",
    "Region",
)
OPTIONAL_COLUMNS = ("SpotPrice",)

TYPE_NAME_MAX = 60  # InstanceType.name
REGION_CODE_MAX = 40  # Region.code
PROVIDER_MAX = 40  # InstanceType.provider
SMALL_INT_MAX = 32767  # PositiveSmallIntegerField (gpu_count, vcpus)
PRICE_PLACES = 6  # services.price_set accepts at most 6 decimal places

# GCP's accelerator-optimised VM families: the CSV prices only the host VM (vCPU and RAM); the
# GPUs are separate accelerator rows without an InstanceType.
GPU_PRICED_SEPARATELY = re.compile(r"^(a2|a3|a4|a4x)-", re.IGNORECASE)
PCIE = re.compile(r"pcie", re.IGNORECASE)
NVL = re.compile(r"nvl(?!ink)", re.IGNORECASE)  # H100 NVL, not "NVLink"

# Reasons a row is not imported (UnmappedRow.reason). Unknown accelerators add their name.
NO_INSTANCE_TYPE = "no instance type (accelerator priced separately)"
NO_PRICE = "no on-demand price"
PRICE_NOT_POSITIVE = "on-demand price is not positive"
PRICE_NOT_NUMBER = "on-demand price is not a number"
PRICE_TOO_PRECISE = f"price has more than {PRICE_PLACES} decimal places"
SPOT_NOT_NUMBER = "spot price is not a number"
CPU_ONLY = "no accelerator (CPU-only)"
GPU_SEPARATE = "GPU priced separately (host VM price only)"
UNKNOWN_ACCELERATOR = "unknown accelerator"
NO_GPU_COUNT = "no GPU count"
GPU_COUNT_FRACTIONAL = "fractional GPU count"
GPU_COUNT_INVALID = "GPU count is not a positive whole number"
VCPUS_INVALID = "vCPUs missing or not a number"
MEMORY_INVALID = "MemoryGiB missing or not a number"
NO_REGION = "no region"
SPECS_DIFFER = "specs differ from the first row of this instance type"


@dataclass(frozen=True)
class UnmappedRow:
    """A CSV row that did not become (part of) a price."""

    line: int
    instance_type: str
    region: str
    reason: str


@dataclass(frozen=True)
class ImportResult:
    provider: str
    rows: int
    types_created: int
    types_updated: int
    types_unchanged: int
    regions_created: int
    prices_created: int
    prices_unchanged: int
    unmapped: tuple[UnmappedRow, ...]

    @property
    def rows_imported(self) -> int:
        return self.rows - len(self.unmapped)

    @property
    def types(self) -> int:
        return self.types_created + self.types_updated + self.types_unchanged

    @property
    def prices(self) -> int:
        return self.prices_created + self.prices_unchanged

    def unmapped_by_reason(self) -> dict[str, int]:
        """Reason to number of rows, most frequent first (then by reason)."""
        counts = Counter(row.reason for row in self.unmapped)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def unmapped_examples(self, reason: str, limit: int = 3) -> tuple[UnmappedRow, ...]:
        return tuple(row for row in self.unmapped if row.reason == reason)[:limit]


@dataclass(frozen=True)
class _Offer:
    """A row that maps: one availability zone's (or region's) offer of a type."""

    line: int
    provider_name: str
    region_code: str
    region_name: str
    gpu_model: GpuModel
    gpu_count: int
    vcpus: int
    ram_gib: int
    on_demand: Decimal
    spot: Decimal | None

    @property
    def specs(self) -> tuple:
        return (self.gpu_model.pk, self.gpu_count, self.vcpus, self.ram_gib)


class _Skip(Exception):
    """Raised while parsing a row that is reported instead of imported."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- names --------------------------------------------------------------------------------------


def type_slug(instance_type: str) -> str:
    """A SlugField-safe name: lower case, anything but letters, digits, _ and - becomes _."""
    return re.sub(r"[^a-z0-9_-]", "_", instance_type.strip().lower())[:TYPE_NAME_MAX]


def region_slug(region: str) -> str:
    """``us-east-1`` stays; ``East Coast (NY2)`` becomes ``east-coast-ny2``."""
    return slugify(region.strip())[:REGION_CODE_MAX].strip("-")


def _unique_type_names(provider: str, provider_names: list[str]) -> dict[str, str]:
    """A name per provider_name that no other type of this provider already has.

    ``instance_type_upsert`` finds a type by (provider, provider_name), else by name; two
    provider names with the same slug (``a.b``, ``a_b``) must not land on one type, so the
    second one gets a stable suffix.
    """
    owners = dict(
        InstanceType.objects.filter(provider=provider).values_list("name", "provider_name")
    )
    existing = set(
        InstanceType.objects.filter(
            provider=provider, provider_name__in=provider_names
        ).values_list("provider_name", flat=True)
    )
    names: dict[str, str] = {}
    for original in provider_names:
        name = type_slug(original)
        taken = owners.get(name, original) != original
        if original not in existing and taken:
            digest = hashlib.sha256(original.encode()).hexdigest()[:6]
            name = f"{name[: TYPE_NAME_MAX - 7]}_{digest}"
        owners.setdefault(name, original)
        names[original] = name
    return names


# --- reading ------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (line number, row) pairs of a catalog CSV (UTF-8, BOM and CRLF allowed)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(
            _("%(path)s does not exist or is not a file.") % {"path": path},
            code=CatalogErrorCode.CATALOG_INVALID,
        )
    data = path.read_bytes()
    if b"\x00" in data:
        raise InvalidInput(
            _("%(file)s is not a CSV text file.") % {"file": path.name},
            code=CatalogErrorCode.CATALOG_INVALID,
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            _("%(file)s is not UTF-8 text (%(reason)s at byte %(byte)s).")
            % {"file": path.name, "reason": exc.reason, "byte": exc.start},
            code=CatalogErrorCode.CATALOG_INVALID,
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        rows = []
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise InvalidInput(
            _("%(file)s line %(line)s is not valid CSV: %(error)s.")
            % {"file": path.name, "line": reader.line_num, "error": exc},
            code=CatalogErrorCode.CATALOG_INVALID,
        ) from None
    if not header:
        raise InvalidInput(
            _("%(file)s is empty: it has no header row.") % {"file": path.name},
            code=CatalogErrorCode.CATALOG_INVALID,
        )
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise InvalidInput(
            ngettext(
                "%(file)s is not a SkyPilot catalog CSV: missing column %(columns)s.",
                "%(file)s is not a SkyPilot catalog CSV: missing columns %(columns)s.",
                len(missing),
            )
            % {"file": path.name, "columns": ", ".join(missing)},
            code=CatalogErrorCode.CATALOG_INVALID,
            details={"missing_columns": missing},
        )
    return header, rows


def _cell(row: dict[str, str], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def _number(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _price(text: str) -> Decimal:
    if not text:
        raise _Skip(NO_PRICE)
    value = _number(text)
    if value is None:
        raise _Skip(PRICE_NOT_NUMBER)
    if value <= 0:
        raise _Skip(PRICE_NOT_POSITIVE)
    if value.as_tuple().exponent < -PRICE_PLACES:
        raise _Skip(PRICE_TOO_PRECISE)
    return value


def _spot(text: str) -> Decimal | None:
    """A positive spot price, or None for an empty, zero or negative one (Vast writes 0.00)."""
    if not text:
        return None
    value = _number(text)
    if value is None:
        raise _Skip(SPOT_NOT_NUMBER)
    if value <= 0:
        return None
    if value.as_tuple().exponent < -PRICE_PLACES:
        raise _Skip(PRICE_TOO_PRECISE)
    return value


def _gpu_count(text: str) -> int:
    if not text:
        raise _Skip(NO_GPU_COUNT)
    value = _number(text)
    if value is None:
        raise _Skip(GPU_COUNT_INVALID)
    if value != value.to_integral_value():
        raise _Skip(GPU_COUNT_FRACTIONAL)
    if not 1 <= value <= SMALL_INT_MAX:
        raise _Skip(GPU_COUNT_INVALID)
    return int(value)


def _whole(text: str, reason: str, maximum: int) -> int:
    """Rounded half up, at least 1."""
    value = _number(text) if text else None
    if value is None or value < 0 or value > maximum:
        raise _Skip(reason)
    return max(1, int(value.to_integral_value(rounding=ROUND_HALF_UP)))


def _gpu_model(
    accelerator: str, instance_type: str, index: dict[str, GpuModel], plain_of_sxm_pair: bool
) -> GpuModel:
    model = index.get(accelerator.upper())
    if model is None:
        raise _Skip(f"{UNKNOWN_ACCELERATOR} {accelerator}")
    names = f"{instance_type} {accelerator}"
    for marker, wanted in ((NVL, "nvl"), (PCIE, "pcie")):
        if marker.search(names) or (wanted == "pcie" and plain_of_sxm_pair):
            if wanted in model.variant.lower():
                return model
            variants = sorted(
                {m for m in index.values() if m.name == model.name and wanted in m.variant.lower()},
                key=lambda m: (m.memory_gb != model.memory_gb, m.variant),
            )
            if variants:
                return variants[0]
    return model


def _offer(
    line: int,
    row: dict[str, str],
    index: dict[str, GpuModel],
    sxm_pairs: set[str],
) -> _Offer:
    instance_type = _cell(row, "InstanceType")
    accelerator = _cell(row, "AcceleratorName")
    if not instance_type:
        raise _Skip(NO_INSTANCE_TYPE)
    on_demand = _price(_cell(row, "Price"))
    spot = _spot(_cell(row, "SpotPrice"))
    if not accelerator:
        raise _Skip(GPU_SEPARATE if GPU_PRICED_SEPARATELY.match(instance_type) else CPU_ONLY)
    plain_of_sxm_pair = accelerator.upper() in sxm_pairs and "sxm" not in instance_type.lower()
    gpu_model = _gpu_model(accelerator, instance_type, index, plain_of_sxm_pair)
    gpu_count = _gpu_count(_cell(row, "AcceleratorCount"))
    vcpus = _whole(_cell(row, "vCPUs"), VCPUS_INVALID, SMALL_INT_MAX)
    ram_gib = _whole(_cell(row, "MemoryGiB"), MEMORY_INVALID, 2**31 - 1)
    region_name = _cell(row, "Region")
    region_code = region_slug(region_name)
    if not region_code:
        raise _Skip(NO_REGION)
    return _Offer(
        line=line,
        provider_name=instance_type,
        region_code=region_code,
        region_name=region_name[:80],
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        vcpus=vcpus,
        ram_gib=ram_gib,
        on_demand=on_demand,
        spot=spot,
    )


def _snapshot(instance_type: InstanceType | None) -> tuple | None:
    if instance_type is None:
        return None
    return (
        instance_type.gpu_model_id,
        instance_type.gpu_count,
        instance_type.vcpus,
        instance_type.ram_gib,
        instance_type.interconnect,
        instance_type.spot_allowed,
        instance_type.description,
    )


def _description(offer: _Offer, provider: str) -> str:
    return (
        f"{offer.gpu_count}x {offer.gpu_model}, {offer.vcpus} vCPUs, {offer.ram_gib} GiB RAM "
        f"({provider} {offer.provider_name})"
    )


# --- import -------------------------------------------------------------------------------------


def catalog_import(
    *, path: Path, provider: str, currency: str = Currency.USD, actor: Actor | None = None
) -> ImportResult:
    """Create or update the instance types and prices of one SkyPilot catalog CSV.

    Runs in one transaction: an ``InvalidInput`` from any service rolls back everything.
    Importing the same file again changes nothing (prices in force are left alone).
    """
    provider = (provider or "").strip()
    if not provider or len(provider) > PROVIDER_MAX:
        raise InvalidInput(
            _("Give the provider a name of at most %(max)s characters.") % {"max": PROVIDER_MAX},
            code=CatalogErrorCode.CATALOG_INVALID,
        )
    path = Path(path)
    _header, rows = _read(path)
    index = services.gpu_model_index()
    if not index:
        raise InvalidInput(
            _("No GPU models are loaded, so no accelerator can be mapped. Load gpus.csv first."),
            code=CatalogErrorCode.GPU_MODELS_MISSING,
        )

    accelerators = {_cell(row, "AcceleratorName").upper() for _line, row in rows}
    sxm_pairs = {name for name in accelerators if name and f"{name}-SXM" in accelerators}

    unmapped: list[UnmappedRow] = []
    first: dict[str, _Offer] = {}  # provider_name -> its first offer (the type's specs)
    prices: dict[tuple[str, str], tuple[Decimal, Decimal | None]] = {}
    region_names: dict[str, str] = {}
    for line, row in rows:
        try:
            offer = _offer(line, row, index, sxm_pairs)
            seen = first.setdefault(offer.provider_name, offer)
            if seen.specs != offer.specs:
                raise _Skip(SPECS_DIFFER)
        except _Skip as skip:
            unmapped.append(
                UnmappedRow(
                    line=line,
                    instance_type=_cell(row, "InstanceType"),
                    region=_cell(row, "Region"),
                    reason=skip.reason,
                )
            )
            continue
        region_names.setdefault(offer.region_code, offer.region_name)
        key = (offer.provider_name, offer.region_code)
        if key in prices:
            low, low_spot = prices[key]
            spots = [s for s in (low_spot, offer.spot) if s is not None]
            prices[key] = (min(low, offer.on_demand), min(spots) if spots else None)
        else:
            prices[key] = (offer.on_demand, offer.spot)

    spot_allowed = {name: False for name in first}
    for (name, _region), (_on_demand, spot) in prices.items():
        spot_allowed[name] = spot_allowed[name] or spot is not None

    counts = Counter()
    with transaction.atomic():
        names = _unique_type_names(provider, list(first))
        before = {
            instance_type.provider_name: _snapshot(instance_type)
            for instance_type in InstanceType.objects.filter(
                provider=provider, provider_name__in=list(first)
            )
        }
        known_regions = set(
            Region.objects.filter(code__in=list(region_names)).values_list("code", flat=True)
        )
        regions: dict[str, Region] = {}
        for code, name in region_names.items():
            regions[code] = services.region_ensure(code=code, name=name)
            counts["regions_created"] += code not in known_regions

        types: dict[str, InstanceType] = {}
        for provider_name, offer in first.items():
            instance_type, created = services.instance_type_upsert(
                name=names[provider_name],
                gpu_model=offer.gpu_model,
                gpu_count=offer.gpu_count,
                vcpus=offer.vcpus,
                ram_gib=offer.ram_gib,
                spot_allowed=spot_allowed[provider_name],
                description=_description(offer, provider),
                provider=provider,
                provider_name=provider_name,
            )
            types[provider_name] = instance_type
            if created:
                counts["types_created"] += 1
            elif before.get(provider_name) == _snapshot(instance_type):
                counts["types_unchanged"] += 1
            else:
                counts["types_updated"] += 1

        effective_from = timezone.now()
        for (provider_name, code), (on_demand, spot) in prices.items():
            _price_row, created = services.price_set(
                instance_type=types[provider_name],
                region=regions[code],
                currency=currency,
                on_demand_per_hour=on_demand,
                spot_per_hour=spot,
                effective_from=effective_from,
                actor=actor,
            )
            counts["prices_created" if created else "prices_unchanged"] += 1

    return ImportResult(
        provider=provider,
        rows=len(rows),
        types_created=counts["types_created"],
        types_updated=counts["types_updated"],
        types_unchanged=counts["types_unchanged"],
        regions_created=counts["regions_created"],
        prices_created=counts["prices_created"],
        prices_unchanged=counts["prices_unchanged"],
        unmapped=tuple(unmapped),
    )
