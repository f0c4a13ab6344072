import pytest

from tests.factories import catalog


@pytest.fixture
def gpu_models(db):
    return catalog.gpu_models()


@pytest.fixture
def region(db):
    return catalog.region()


@pytest.fixture
def make_host(gpu_models, region):
    def make(gpu="H200", count=8, vcpus=128, ram_gib=2048, in_region=None, mig=True, name=None):
        return catalog.host(
            in_region or region,
            gpu=gpu,
            count=count,
            vcpus=vcpus,
            ram_gib=ram_gib,
            mig=mig,
            name=name,
        )

    return make


@pytest.fixture
def make_type(gpu_models):
    def make(name, gpu="h200-sxm-141gb", count=1, vcpus=8, ram_gib=64, mig=None):
        return catalog.instance_type(
            name, gpu_models[gpu], count=count, vcpus=vcpus, ram_gib=ram_gib, mig=mig
        )

    return make
