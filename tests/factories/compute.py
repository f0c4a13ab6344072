"""A compute world (catalog, organisation, owner, SSH key) and helpers for instances."""

import copy
from decimal import Decimal

from portal.accounts import services as account_services
from portal.accounts.types import Actor
from portal.catalog import services as catalog_services
from portal.catalog.models import GpuModel, Image, MigProfile
from portal.catalog.synthetic import DATA_DIR, H200_MIG_TABLES, synthesize_report
from portal.compute import services as compute_services
from portal.compute.models import Instance
from portal.compute.services import LaunchRequest
from tests.factories import accounts as factories


class World:
    """An organisation with an owner and an SSH key; a region with H200 hosts; types and prices."""

    def __init__(
        self,
        *,
        hosts: int = 1,
        gpus_per_host: int = 8,
        region_code: str = "us-east-1",
        region_country: str = "US",
        credit_amount: str | None = "10000",
        **org_fields,
    ) -> None:
        if not GpuModel.objects.exists():
            catalog_services.gpu_models_load(path=DATA_DIR / "gpus.csv")
        self.region = catalog_services.region_ensure(
            code=region_code, name=region_code, country=region_country
        )
        self.hosts = [
            catalog_services.host_register(
                name=f"{region_code}-h200-{i}-{factories.next_id()}",
                region=self.region,
                report=synthesize_report(
                    gpu="H200", count=gpus_per_host, seed=f"{region_code}-{i}-{factories.next_id()}"
                ),
                vcpus=512,
                ram_gib=8192,
                mig_tables=H200_MIG_TABLES.read_text(),
            )
            for i in range(hosts)
        ]
        h200 = GpuModel.objects.get(code="h200-sxm-141gb")
        self.types = {}
        for name, count, mig, price in [
            ("gpu_1x_h200", 1, None, "3.50"),
            ("gpu_2x_h200", 2, None, "7.00"),
            ("gpu_8x_h200", 8, None, "28.00"),
            ("mig_1g_18gb", 1, "1g.18gb", "0.60"),
        ]:
            profile = MigProfile.objects.get(gpu_model=h200, name=mig) if mig else None
            instance_type, _ = catalog_services.instance_type_upsert(
                name=name, gpu_model=h200, gpu_count=count, mig_profile=profile, vcpus=4, ram_gib=32
            )
            catalog_services.price_set(
                instance_type=instance_type,
                region=self.region,
                currency="USD",
                on_demand_per_hour=Decimal(price),
            )
            self.types[name] = instance_type
        self.image = Image.objects.filter(is_default=True).first() or Image.objects.create(
            name="ubuntu-24.04", os="Ubuntu 24.04", is_default=True
        )
        self.org = factories.organization(
            credit_amount=credit_amount, **{"currency": "USD", **org_fields}
        )
        self.owner = factories.member(self.org, "owner")
        self.ssh_key = account_services.ssh_key_create(
            actor=Actor.system(self.org), public_key=factories.ed25519_public_key()
        )

    def tenant(self, name: str) -> "World":
        """Another organisation (its own credit, owner and SSH key) launching into this world's
        region and hosts."""
        other = copy.copy(self)
        other.org = factories.organization(name=name, currency="USD")
        other.owner = factories.member(other.org, "owner")
        other.ssh_key = account_services.ssh_key_create(
            actor=Actor.system(other.org), public_key=factories.ed25519_public_key()
        )
        return other

    def actor(self, role: str = "owner") -> Actor:
        user = self.owner if role == "owner" else factories.member(self.org, role)
        return factories.actor(self.org, user)

    def request(
        self, name: str = "box", instance_type: str = "gpu_1x_h200", **extra
    ) -> LaunchRequest:
        return LaunchRequest(
            name=name,
            instance_type=instance_type,
            region=self.region.code,
            image=self.image.name,
            ssh_key_ids=(self.ssh_key.pk,),
            **extra,
        )


def settle(instance: Instance) -> Instance:
    """Do the sync task's work until the instance stops moving."""
    for _ in range(10):
        if not compute_services.instance_sync(instance_id=instance.pk):
            break
    instance.refresh_from_db()
    return instance


def pages_catalog() -> dict:
    """``gpu_1x_h200``: 3.50 USD/h in us-east-1, 3.10 in us-west-1 (no host there);
    ``gpu_8x_h200``: 28.00 in us-east-1 only. ``ubuntu-cuda`` is the default image."""
    catalog_services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    h200 = GpuModel.objects.get(code="h200-sxm-141gb")
    east = catalog_services.region_ensure(code="us-east-1", name="Virginia", country="US")
    west = catalog_services.region_ensure(code="us-west-1", name="California", country="US")
    n = factories.next_id()
    host = catalog_services.host_register(
        name=f"h200-pages-host-{n}",
        region=east,
        report=synthesize_report(gpu="H200", count=8, seed=f"compute-pages-{n}"),
        vcpus=128,
        ram_gib=2048,
    )
    one, _ = catalog_services.instance_type_upsert(
        name="gpu_1x_h200", gpu_model=h200, gpu_count=1, vcpus=8, ram_gib=64
    )
    eight, _ = catalog_services.instance_type_upsert(
        name="gpu_8x_h200", gpu_model=h200, gpu_count=8, vcpus=64, ram_gib=512
    )
    for instance_type, region, usd in (
        (one, east, "3.50"),
        (one, west, "3.10"),
        (eight, east, "28.00"),
    ):
        catalog_services.price_set(
            instance_type=instance_type, region=region, currency="USD", on_demand_per_hour=usd
        )
    image = Image.objects.create(name="ubuntu-cuda", os="Ubuntu 24.04", is_default=True)
    Image.objects.create(name="ubuntu-plain", os="Ubuntu 24.04")
    return {"one": one, "eight": eight, "east": east, "west": west, "host": host, "image": image}
