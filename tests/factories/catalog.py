"""Catalog data: GPU models, regions, hosts from synthetic nvidia-smi reports, instance types,
and hostile host reports."""

import itertools

from portal.catalog import services
from portal.catalog.models import GpuModel, MigProfile
from portal.catalog.synthetic import DATA_DIR, H100_MIG_TABLES, H200_MIG_TABLES, synthesize_report

_seq = itertools.count(1)


def gpu_models() -> dict[str, GpuModel]:
    """The GPU models of the embedded table, by code."""
    services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    return {m.code: m for m in GpuModel.objects.all()}


def region(code: str = "us-east-1", name: str = "Virginia", country: str = "US"):
    return services.region_ensure(code=code, name=name, country=country)


def host(region, gpu="H200", count=8, vcpus=128, ram_gib=2048, mig=True, name=None):
    """A host registered in ``region`` from a synthetic report of ``count`` GPUs (with the MIG
    tables of H200 and H100 unless ``mig=False``)."""
    n = next(_seq)
    tables = {"H200": H200_MIG_TABLES, "H100": H100_MIG_TABLES}.get(gpu) if mig else None
    return services.host_register(
        name=name or f"{gpu.lower()}-host-{n}",
        region=region,
        report=synthesize_report(gpu=gpu, count=count, seed=f"test-{n}"),
        vcpus=vcpus,
        ram_gib=ram_gib,
        mig_tables=tables.read_text() if tables else None,
    )


def instance_type(name, gpu_model: GpuModel, count=1, vcpus=8, ram_gib=64, mig=None):
    """An instance type of ``count`` whole GPUs, or of one MIG slice (``mig="1g.18gb"``)."""
    profile = MigProfile.objects.get(gpu_model=gpu_model, name=mig) if mig else None
    made, _ = services.instance_type_upsert(
        name=name,
        gpu_model=gpu_model,
        gpu_count=count,
        vcpus=vcpus,
        ram_gib=ram_gib,
        mig_profile=profile,
    )
    return made


# --- hostile host reports -------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE nvidia_smi_log [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<nvidia_smi_log><driver_version>&lol9;</driver_version></nvidia_smi_log>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE nvidia_smi_log [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<nvidia_smi_log><driver_version>&secret;</driver_version></nvidia_smi_log>
"""
