"""Reading what a GPU host says about itself.

- ``nvidia-smi -q -x``: the device report (XML). Parsed with defusedxml: no entities, no DTD
  fetches, so a hostile upload cannot expand or read anything.
- ``nvidia-smi mig -lgip`` and ``-lgipp``: the MIG GPU-instance profiles and their placements
  (text tables, as in the host's ``host.txt``).

Both raise ``InvalidInput`` with code ``report_invalid`` and a message that says what is wrong
and where.
"""

import re
from decimal import Decimal, InvalidOperation
from xml.etree.ElementTree import Element  # nosec B405 # a type hint; defusedxml parses

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from portal.catalog.errors import CatalogErrorCode
from portal.catalog.types import GpuReport, HostReport, MigProfileReport
from portal.errors import InvalidInput

MAX_REPORT_BYTES = 2 * 1024 * 1024


def _invalid(message: str, **details) -> InvalidInput:
    return InvalidInput(message, code=CatalogErrorCode.REPORT_INVALID, details=details)


def _text(element: Element, path: str, where: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise _invalid(f"{where}: <{path}> is missing.", field=path)
    return found.text.strip()


def _mib(value: str, where: str) -> int:
    match = re.fullmatch(r"(\d+)\s*MiB", value)
    if not match:
        raise _invalid(f"{where}: memory '{value}' is not in MiB.")
    return int(match.group(1))


def parse_nvidia_smi_report(data: bytes | str) -> HostReport:
    """Parse an ``nvidia-smi -q -x`` report into a :class:`HostReport`."""
    if isinstance(data, str):
        data = data.encode()
    if not data.strip():
        raise _invalid("The report is empty.")
    if len(data) > MAX_REPORT_BYTES:
        raise _invalid(f"The report is larger than {MAX_REPORT_BYTES // 1024 // 1024} MiB.")
    try:
        # nvidia-smi writes a DOCTYPE naming its DTD; it declares no entities, so forbidding
        # entity declarations (the default) keeps real reports and refuses XML bombs.
        root = ElementTree.fromstring(data, forbid_dtd=False)
    except DefusedXmlException as exc:
        raise _invalid(f"The report uses forbidden XML features ({type(exc).__name__}).") from None
    except ElementTree.ParseError as exc:
        raise _invalid(f"The report is not well-formed XML: {exc}.") from None
    if root.tag != "nvidia_smi_log":
        raise _invalid(
            f"This is not an nvidia-smi report: the root element is <{root.tag}>, "
            "expected <nvidia_smi_log> (run `nvidia-smi -q -x`)."
        )
    driver = _text(root, "driver_version", "report")
    cuda = (root.findtext("cuda_version") or "").strip()
    gpus = []
    for position, gpu in enumerate(root.findall("gpu")):
        where = f"GPU {position} ({gpu.get('id', 'no id')})"
        product = _text(gpu, "product_name", where)
        brand = (gpu.findtext("product_brand") or "").strip()
        if "NVIDIA" not in product.upper() and brand.upper() not in {"NVIDIA", "TESLA", "QUADRO"}:
            raise _invalid(f"{where}: '{product}' is not an NVIDIA GPU.")
        index_text = _text(gpu, "minor_number", where)
        if not index_text.isdigit():
            raise _invalid(f"{where}: minor number '{index_text}' is not a number.")
        gpus.append(
            GpuReport(
                index=int(index_text),
                uuid=_text(gpu, "uuid", where),
                pci_bus_id=_text(gpu, "pci/pci_bus_id", where),
                product_name=product,
                memory_mib=_mib(_text(gpu, "fb_memory_usage/total", where), where),
                mig_mode=(gpu.findtext("mig_mode/current_mig") or "").strip() == "Enabled",
                architecture=(gpu.findtext("product_architecture") or "").strip(),
            )
        )
    if not gpus:
        raise _invalid("The report lists no GPUs.")
    declared = (root.findtext("attached_gpus") or "").strip()
    if declared.isdigit() and int(declared) != len(gpus):
        raise _invalid(f"The report says {declared} GPUs are attached but describes {len(gpus)}.")
    uuids = [g.uuid for g in gpus]
    duplicates = sorted({u for u in uuids if uuids.count(u) > 1})
    if duplicates:
        raise _invalid(f"GPU UUID {duplicates[0]} appears twice in the report.", uuid=duplicates[0])
    return HostReport(driver_version=driver, cuda_version=cuda, gpus=tuple(gpus))


_LGIP_ROW = re.compile(
    r"^\|\s*(?P<gpu>\d+)\s+MIG\s+(?P<name>\d+g\.\d+gb(?:\+\w+)?)\s+(?P<id>\d+)\s+"
    r"(?P<free>\d+)/(?P<total>\d+)\s+(?P<mem>[\d.]+)\s+\w+\s+(?P<sm>\d+)"
)
_LGIPP_ROW = re.compile(
    r"^GPU\s+(?P<gpu>\d+)\s+Profile ID\s+(?P<id>\d+)\s+Placements?\s*:\s*\{(?P<starts>[\d,\s]+)\}:(?P<size>\d+)"
)


def parse_mig_tables(text: str, *, gpu: int = 0) -> tuple[MigProfileReport, ...]:
    """Join ``nvidia-smi mig -lgip`` rows with their ``-lgipp`` placements for one GPU.

    Profiles with media extensions (``+me``) share placements with their plain profile and are
    kept as their own profiles.
    """
    profiles: dict[int, dict] = {}
    placements: dict[int, tuple[tuple[int, ...], int]] = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if match := _LGIP_ROW.match(line):
            if int(match["gpu"]) != gpu:
                continue
            try:
                memory = Decimal(match["mem"])
            except InvalidOperation:
                raise _invalid(f"line {number}: memory '{match['mem']}' is not a number.") from None
            profiles[int(match["id"])] = {
                "name": match["name"],
                "profile_id": int(match["id"]),
                "memory_gib": memory,
                "max_instances": int(match["total"]),
                "sm_count": int(match["sm"]),
            }
        elif match := _LGIPP_ROW.match(line):
            if int(match["gpu"]) != gpu:
                continue
            starts = tuple(int(s) for s in match["starts"].replace(" ", "").split(",") if s)
            placements[int(match["id"])] = (starts, int(match["size"]))
    if not profiles:
        raise _invalid(
            "No MIG GPU-instance profiles found (expected `nvidia-smi mig -lgip` output)."
        )
    result = []
    for profile_id, row in profiles.items():
        if profile_id not in placements:
            raise _invalid(
                f"MIG profile {row['name']} (ID {profile_id}) has no placements "
                "(expected `nvidia-smi mig -lgipp` output)."
            )
        starts, size = placements[profile_id]
        if size < 1 or size > 8 or any(s + size > 8 for s in starts):
            raise _invalid(
                f"MIG profile {row['name']}: placements {starts}:{size} do not fit 8 slots."
            )
        result.append(MigProfileReport(placements=starts, memory_slots=size, **row))
    return tuple(sorted(result, key=lambda p: (-p.memory_slots, p.name)))
