import itertools

import pytest

from portal.catalog import services
from portal.catalog.models import GpuModel, MigProfile
from portal.catalog.synthetic import DATA_DIR, H100_MIG_TABLES, H200_MIG_TABLES, synthesize_report

_seq = itertools.count(1)


@pytest.fixture
def gpu_models(db):
    services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    return {m.code: m for m in GpuModel.objects.all()}


@pytest.fixture
def region(db):
    return services.region_ensure(code="us-east-1", name="Virginia", country="US")


@pytest.fixture
def make_host(gpu_models, region):
    def make(gpu="H200", count=8, vcpus=128, ram_gib=2048, in_region=None, mig=True, name=None):
        n = next(_seq)
        tables = {"H200": H200_MIG_TABLES, "H100": H100_MIG_TABLES}.get(gpu) if mig else None
        return services.host_register(
            name=name or f"{gpu.lower()}-host-{n}",
            region=in_region or region,
            report=synthesize_report(gpu=gpu, count=count, seed=f"test-{n}"),
            vcpus=vcpus,
            ram_gib=ram_gib,
            mig_tables=tables.read_text() if tables else None,
        )

    return make


@pytest.fixture
def make_type(gpu_models):
    def make(name, gpu="h200-sxm-141gb", count=1, vcpus=8, ram_gib=64, mig=None):
        model = gpu_models[gpu]
        profile = MigProfile.objects.get(gpu_model=model, name=mig) if mig else None
        instance_type, _ = services.instance_type_upsert(
            name=name,
            gpu_model=model,
            gpu_count=count,
            vcpus=vcpus,
            ram_gib=ram_gib,
            mig_profile=profile,
        )
        return instance_type

    return make
