"""Catalog at scale: 200 instance types x 20 regions x 500 hosts (8 GPUs each).

Measures the query count and time of ``GET /api/v1/instance-types`` and of the catalog page
(served from the catalog cache, and rebuilt after a catalog change, as after every launch),
and the time of one availability computation, first on a small catalog and then on the full
one, to show the query count does not grow with the number of rows. Each is compared with a
trivial Django view for a logged-in user, measured in the same run (the ratio).

Run: DEBUG=1 .venv/bin/python bench/catalog.py [--types 200 --regions 20 --hosts 500 --repeat 5]
Uses a throwaway test database: in-memory SQLite, or DATABASE_URL's server.
"""

import argparse
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402


def build(types: int, regions: int, hosts: int, tag: str) -> None:
    """Bulk-load a catalog of the given size (set-up only; the measured paths use services)."""
    import uuid

    from portal.catalog.models import Gpu, GpuModel, Host, InstanceType, MigProfile, Price, Region

    models = list(GpuModel.objects.filter(vendor="NVIDIA"))
    h200 = GpuModel.objects.get(code="h200-sxm-141gb")
    profile = MigProfile.objects.filter(gpu_model=h200, name="1g.18gb").first()
    region_rows = Region.objects.bulk_create(
        Region(code=f"{tag}-r{i}", name=f"Region {i}") for i in range(regions)
    )
    type_rows = []
    for i in range(types):
        model = models[i % len(models)]
        if profile and i % 10 == 0:
            type_rows.append(
                InstanceType(
                    name=f"{tag}_mig_{i}",
                    gpu_model=h200,
                    gpu_count=1,
                    mig_profile=profile,
                    vcpus=2,
                    ram_gib=16,
                )
            )
        else:
            count = (1, 2, 4, 8)[i % 4]
            type_rows.append(
                InstanceType(
                    name=f"{tag}_t{i}",
                    gpu_model=model,
                    gpu_count=count,
                    vcpus=8 * count,
                    ram_gib=64 * count,
                )
            )
    type_rows = InstanceType.objects.bulk_create(type_rows)
    Price.objects.bulk_create(
        Price(
            instance_type=t,
            region=r,
            currency="USD",
            on_demand_per_hour=Decimal("1.25") * (1 + i % 9),
        )
        for i, t in enumerate(type_rows)
        for r in region_rows
    )
    host_rows = Host.objects.bulk_create(
        Host(name=f"{tag}-h{i}", region=region_rows[i % regions], vcpus=256, ram_gib=2048)
        for i in range(hosts)
    )
    Gpu.objects.bulk_create(
        Gpu(
            host=h,
            index=g,
            uuid=f"GPU-{uuid.uuid4()}",
            pci_bus_id=f"00000000:{g:02X}:00.0",
            gpu_model=models[i % len(models)],
            memory_mib=81920,
            mig_enabled=models[i % len(models)].pk == h200.pk,
        )
        for i, h in enumerate(host_rows)
        for g in range(8)
    )


def trivial_view(request):
    from django.http import HttpResponse

    return HttpResponse("ok")


def measure(label: str, repeat: int) -> None:
    from django.test import Client
    from rest_framework.test import APIClient

    from portal.accounts import services
    from portal.accounts.models import Organization
    from portal.accounts.types import Actor
    from portal.catalog import capacity, selectors
    from portal.catalog.cache import catalog_changed
    from tests import factories
    from tests.factories import QueryCounter

    org = Organization.objects.get_or_create(
        slug="bench", defaults={"name": "Bench", "billing_email": "b@x.com", "country": "US"}
    )[0]
    _, secret = services.api_key_create(actor=Actor.system(org), name="bench", role="viewer")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    public = Client()
    member = Client()
    member.force_login(factories.member(org, "viewer"))
    api.get("/api/v1/instance-types")  # warm up, stamps the key's last use
    member.get("/bench-trivial/")

    def timed(fn, *, rebuilt=False):
        """Median and range in ms, and the query count. ``rebuilt``: each call after a catalog
        change (the offers and the page are built afresh, as after a launch)."""
        times = []
        for _ in range(repeat):
            if rebuilt:
                catalog_changed()
            else:
                fn()  # the first call after a change builds; measure the ones after it
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        if rebuilt:
            catalog_changed()
        with QueryCounter() as counted:
            fn()
        return statistics.median(times), min(times), max(times), counted.n

    def row(name, result, base=None):
        ms, low, high, queries = result
        ratio = f"  x{ms / base:5.1f} the trivial view" if base else ""
        print(f"  {name:52s} {ms:8.2f} ms ({low:.1f}-{high:.1f})  {queries:2d} queries{ratio}")

    base = timed(lambda: member.get("/bench-trivial/"))
    offers = len(selectors.catalog_offers(currency="USD"))
    print(f"{label}: {offers} offers")
    row("trivial Django view, logged in (baseline)", base)
    api_url = "/api/v1/instance-types?page_size=200"
    row(f"GET {api_url}", timed(lambda: api.get(api_url)), base[0])
    row("GET /catalog/, logged in", timed(lambda: member.get("/catalog/")), base[0])
    row("GET /catalog/, public", timed(lambda: public.get("/catalog/")), base[0])
    row(
        f"  the same after a catalog change: {api_url}",
        timed(lambda: api.get(api_url), rebuilt=True),
        base[0],
    )
    row(
        "  the same after a catalog change: /catalog/",
        timed(lambda: member.get("/catalog/"), rebuilt=True),
        base[0],
    )
    avail = timed(capacity.availability, rebuilt=True)
    row("capacity.availability()", avail)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", type=int, default=200)
    parser.add_argument("--regions", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from portal.catalog import services
        from portal.catalog.synthetic import DATA_DIR, H200_MIG_TABLES, H200_REPORT

        services.gpu_models_load(path=DATA_DIR / "gpus.csv")
        seed_region = services.region_ensure(code="seed", name="Seed")
        services.host_register(  # brings the H200 MIG profiles
            name="seed-h200",
            region=seed_region,
            report=H200_REPORT.read_bytes(),
            vcpus=16,
            ram_gib=125,
            mig_tables=H200_MIG_TABLES.read_text(),
        )
        from django.urls import path

        from portal import urls as root_urls
        from portal.catalog.cache import catalog_changed

        root_urls.urlpatterns.append(path("bench-trivial/", trivial_view))
        print(f"database: {connection.vendor}")
        build(20, 2, 10, "small")
        catalog_changed()  # bulk_create sends no signals
        measure("small catalog (20 types x 2 regions x 10 hosts)", args.repeat)
        start = time.perf_counter()
        build(args.types - 20, args.regions - 2, args.hosts - 10, "large")
        catalog_changed()
        print(f"(loaded the rest in {time.perf_counter() - start:.1f} s)")
        measure(
            f"full catalog ({args.types} types x {args.regions} regions x {args.hosts} hosts)",
            args.repeat,
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
