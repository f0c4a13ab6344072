"""The demo catalog that ``manage.py load_demo_data`` (and so ``make run``) loads.

Real data, loaded the way operators load it: GPU specifications from gpus.csv, Lambda Cloud's
public catalog through ``catalog_import``, our own H200 and MIG types, a demo CNY price list,
and hosts registered from the real H200 ``nvidia-smi -q -x`` report (multi-GPU hosts are built
from it by ``synthetic.synthesize_report``). Safe to run again: nothing is duplicated.
"""

from decimal import Decimal

from django.db import transaction

from portal.catalog import services
from portal.catalog.importers import catalog_import
from portal.catalog.models import Host, Image, InstanceType, Interconnect, MigProfile, Price, Region
from portal.catalog.synthetic import (
    DATA_DIR,
    H100_MIG_TABLES,
    H200_MIG_TABLES,
    H200_REPORT,
    synthesize_report,
)
from portal.money import money_round

REGIONS = {
    "us-east-1": ("US East (Virginia)", "US"),
    "us-east-2": ("US East (Washington DC)", "US"),
    "us-east-3": ("US East (Ohio)", "US"),
    "us-midwest-1": ("US Midwest (Illinois)", "US"),
    "us-south-1": ("US South (Texas)", "US"),
    "us-south-2": ("US South (Texas 2)", "US"),
    "us-south-3": ("US South (Texas 3)", "US"),
    "us-west-1": ("US West (California)", "US"),
    "us-west-2": ("US West (Arizona)", "US"),
    "us-west-3": ("US West (Utah)", "US"),
    "europe-central-1": ("Europe Central (Frankfurt)", "DE"),
    "europe-south-1": ("Europe South (Milan)", "IT"),
    "me-west-1": ("Middle East West (Tel Aviv)", "IL"),
    "asia-south-1": ("Asia South (Bengaluru)", "IN"),
    "asia-northeast-1": ("Asia Northeast (Tokyo)", "JP"),
    "asia-northeast-2": ("Asia Northeast (Seoul)", "KR"),
    "australia-east-1": ("Australia East (Sydney)", "AU"),
    "cn-north-1": ("China North (Beijing)", "CN"),
}
OWN_REGIONS = ("us-east-1", "us-west-1", "europe-central-1", "cn-north-1")

# Our own types: (name, GPU model code, GPUs or MIG profile, vCPUs, RAM GiB, NVMe GB, USD/h, spot)
H200 = "h200-sxm-141gb"
H100 = "h100-sxm5-80gb"
OWN_TYPES = [
    ("gpu_1x_h200_sxm", H200, 1, 24, 225, 2900, "3.79", "1.89"),
    ("gpu_1x_h200_16c", H200, 1, 16, 120, 500, "3.29", None),  # fits the real one-GPU probe host
    ("gpu_2x_h200_sxm", H200, 2, 48, 450, 5800, "7.58", "3.78"),
    ("gpu_4x_h200_sxm", H200, 4, 96, 900, 11600, "15.16", None),
    ("gpu_8x_h200_sxm", H200, 8, 192, 1800, 23200, "30.32", None),
    ("mig_h200_1g_18gb", H200, "1g.18gb", 2, 24, 200, "0.59", "0.29"),
    ("mig_h200_1g_35gb", H200, "1g.35gb", 3, 32, 300, "0.89", None),
    ("mig_h200_2g_35gb", H200, "2g.35gb", 4, 48, 400, "1.19", None),
    ("mig_h200_3g_71gb", H200, "3g.71gb", 8, 96, 800, "1.79", None),
    ("mig_h200_4g_71gb", H200, "4g.71gb", 10, 120, 1000, "2.29", None),
    ("mig_h200_7g_141gb", H200, "7g.141gb", 20, 200, 2000, "3.59", None),
    ("mig_h100_1g_10gb", H100, "1g.10gb", 2, 16, 200, "0.39", None),
    ("mig_h100_3g_40gb", H100, "3g.40gb", 8, 64, 600, "1.39", None),
]

# Hosts: (name, region, GPU kind, GPUs, vCPUs, RAM GiB, disk GB, MIG tables)
HOSTS = [
    ("h100-use1-01", "us-east-1", "H100", 8, 224, 2048, 30000, H100_MIG_TABLES),
    ("h100-use1-02", "us-east-1", "H100", 8, 224, 2048, 30000, H100_MIG_TABLES),
    ("h200-use1-01", "us-east-1", "H200", 8, 224, 2048, 30000, H200_MIG_TABLES),
    ("a100-use1-01", "us-east-1", "A100", 8, 128, 2048, 15000, None),
    ("h100-usw1-01", "us-west-1", "H100", 8, 224, 2048, 30000, H100_MIG_TABLES),
    ("h200-euc1-01", "europe-central-1", "H200", 8, 224, 2048, 30000, H200_MIG_TABLES),
    ("h200-cnn1-01", "cn-north-1", "H200", 8, 224, 2048, 30000, H200_MIG_TABLES),
    ("h200-cnn1-02", "cn-north-1", "H200", 8, 224, 2048, 30000, H200_MIG_TABLES),
]
# The real one-GPU H200 host, registered from its report as it is.
REAL_HOST = ("h200-euc1-probe", "europe-central-1", 16, 125, 500)

# A demo price list in yuan, not a conversion: operators set CNY prices of their own.
CNY_PER_USD = Decimal("7.10")

IMAGES = [
    (
        "ubuntu-22.04-cuda-12.4",
        "Ubuntu 22.04 with CUDA 12.4",
        "Ubuntu 22.04",
        "12.4",
        "550.127",
        ["PyTorch 2.5", "JAX 0.4"],
        True,
    ),
    (
        "ubuntu-24.04-cuda-13.0",
        "Ubuntu 24.04 with CUDA 13.0",
        "Ubuntu 24.04",
        "13.0",
        "580.159",
        ["PyTorch 2.9", "vLLM 0.11"],
        False,
    ),
    (
        "ubuntu-24.04-base",
        "Ubuntu 24.04 with NVIDIA driver only",
        "Ubuntu 24.04",
        "",
        "580.159",
        [],
        False,
    ),
]


def _hosts() -> None:
    regions = {code: Region.objects.get(code=code) for code in OWN_REGIONS}
    for name, region, gpu, count, vcpus, ram, disk, tables in HOSTS:
        if Host.objects.filter(name=name).exists():
            continue
        services.host_register(
            name=name,
            region=regions[region],
            report=synthesize_report(gpu=gpu, count=count, seed=f"demo/{name}"),
            vcpus=vcpus,
            ram_gib=ram,
            disk_gb=disk,
            mig_tables=tables.read_text() if tables else None,
        )
    name, region, vcpus, ram, disk = REAL_HOST
    if not Host.objects.filter(name=name).exists():
        services.host_register(
            name=name,
            region=regions[region],
            report=H200_REPORT.read_bytes(),
            vcpus=vcpus,
            ram_gib=ram,
            disk_gb=disk,
            mig_tables=H200_MIG_TABLES.read_text(),
        )


def _own_types() -> None:
    from portal.catalog.models import GpuModel

    models = {m.code: m for m in GpuModel.objects.all()}
    regions = list(Region.objects.filter(code__in=OWN_REGIONS))
    for name, model_code, gpus, vcpus, ram, nvme, usd, spot in OWN_TYPES:
        model = models[model_code]
        profile = (
            MigProfile.objects.get(gpu_model=model, name=gpus) if isinstance(gpus, str) else None
        )
        instance_type, _ = services.instance_type_upsert(
            name=name,
            gpu_model=model,
            gpu_count=1 if profile else gpus,
            mig_profile=profile,
            vcpus=vcpus,
            ram_gib=ram,
            local_nvme_gb=nvme,
            interconnect=Interconnect.INFINIBAND if gpus == 8 else None,
            spot_allowed=spot is not None,
            description=f"{profile.name} slice of one {model}" if profile else f"{gpus}x {model}",
        )
        for region in regions:
            services.price_set(
                instance_type=instance_type,
                region=region,
                currency="USD",
                on_demand_per_hour=usd,
                spot_per_hour=spot,
            )


def to_cny(amount: Decimal) -> Decimal:
    return money_round(amount * CNY_PER_USD, "CNY")


def _cny_prices() -> None:
    usd_prices = Price.objects.filter(currency="USD").select_related("instance_type", "region")
    in_force = {}
    for price in usd_prices.order_by("effective_from"):
        in_force[(price.instance_type_id, price.region_id)] = price
    for price in in_force.values():
        services.price_set(
            instance_type=price.instance_type,
            region=price.region,
            currency="CNY",
            on_demand_per_hour=to_cny(price.on_demand_per_hour),
            spot_per_hour=to_cny(price.spot_per_hour) if price.spot_per_hour else None,
        )


def _images() -> None:
    for name, description, os, cuda, driver, frameworks, default in IMAGES:
        Image.objects.update_or_create(
            name=name,
            defaults={
                "description": description,
                "os": os,
                "cuda_version": cuda,
                "driver_version": driver,
                "frameworks": frameworks,
                "is_default": default,
            },
        )


@transaction.atomic
def load_demo_catalog() -> str:
    """Load (or refresh) the demo catalog; returns a one-line summary."""
    services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    for code, (name, country) in REGIONS.items():
        services.region_ensure(code=code, name=name, country=country)
    result = catalog_import(path=DATA_DIR / "lambda.csv", provider="lambda")
    _hosts()
    _own_types()
    _cny_prices()
    _images()
    return (
        f"Catalog: {InstanceType.objects.count()} instance types, {Region.objects.count()} regions, "
        f"{Host.objects.count()} hosts ({len(result.unmapped)} rows of the public catalog not offered)"
    )
