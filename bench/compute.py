"""Instances at scale.

1. Launch throughput: launches per second through ``instance_launch`` (the whole service: role,
   quota, capacity under row locks, events, audit), one after another, on many hosts (no
   contention) and with N threads racing for one host's GPUs (contention).
2. The instances list with 1,000 instances in one organisation: ``GET /api/v1/instances`` (a page
   of 50) against a trivial Django view for a logged-in user, and the ``/instances/`` page against
   the same base layout with an empty body (and the trivial view), query count and median time,
   all measured in the same run and reported as ratios.

Run: DEBUG=1 DATABASE_URL=postgres://... .venv/bin/python bench/compute.py
(PostgreSQL is what the contention part is about; SQLite serialises writers.) Uses a throwaway
test database.
"""

import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DEFAULT_GPU_QUOTA", "100000")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")  # the sync tasks are not measured

import django

django.setup()

from django.db import close_old_connections, connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402


def median_ms(fn, repeat=7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    from django.conf import settings

    settings.PROVISIONING_BACKENDS["memory"] = {
        "BACKEND": "portal.provisioning.simulated.InMemoryBackend"
    }
    settings.PROVISIONING_BACKEND = "memory"
    setup_test_environment()
    settings.ALLOWED_HOSTS = ["*"]
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from portal.catalog.capacity import CapacityUnavailable
        from portal.compute import services
        from tests.factories import World

        print(f"database: {connection.vendor}")
        world = World(hosts=40, gpus_per_host=8)
        actor = world.actor()

        n = 200
        start = time.perf_counter()
        for i in range(n):
            services.instance_launch(
                actor=actor, request=world.request(name=f"seq-{i}", instance_type="mig_1g_18gb")
            )
        elapsed = time.perf_counter() - start
        print(
            f"launch, one at a time, 40 hosts:        {n / elapsed:7.1f} launches/s ({elapsed / n * 1000:.1f} ms each)"
        )

        contended = World(hosts=1, gpus_per_host=8, region_code="one-host")
        contended.org, contended.owner, contended.ssh_key = world.org, world.owner, world.ssh_key
        results, lock = [], threading.Lock()
        threads_n, per_thread = 8, 10
        barrier = threading.Barrier(threads_n)

        def racer(t):
            barrier.wait()
            for j in range(per_thread):
                try:
                    services.instance_launch(
                        actor=actor,
                        request=contended.request(
                            name=f"race-{t}-{j}", instance_type="mig_1g_18gb"
                        ),
                    )
                    outcome = "ok"
                except CapacityUnavailable:
                    outcome = "full"
                with lock:
                    results.append(outcome)
            close_old_connections()

        start = time.perf_counter()
        threads = [threading.Thread(target=racer, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        print(
            f"launch, {threads_n} threads on one host:       {len(results) / elapsed:7.1f} attempts/s; "
            f"{results.count('ok')} placed (56 MIG slots), {results.count('full')} capacity_unavailable"
        )

        # the list with 1,000 instances
        from portal.compute.models import Instance

        existing = Instance.objects.filter(organization=world.org).count()
        template = Instance.objects.filter(organization=world.org).first()
        Instance.objects.bulk_create(
            Instance(
                organization=world.org,
                name=f"bulk-{i}",
                instance_type=template.instance_type,
                region=template.region,
                image=template.image,
                disk_gb=100,
                backend="memory",
                state="running",
                ip_address=f"10.1.{i // 250}.{i % 250 + 1}",
            )
            for i in range(1000 - existing)
        )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # as autovacuum would after such an insert
                cursor.execute("ANALYZE compute_instance")
        from django.http import HttpResponse
        from django.template import engines
        from django.test import Client
        from django.urls import path
        from rest_framework.test import APIClient

        from portal import urls as root_urls
        from portal.accounts import services as account_services
        from portal.accounts.roles import Action
        from portal.accounts.types import Actor
        from portal.accounts.views import org_page
        from tests.factories import QueryCounter

        empty_layout = engines["django"].from_string(
            '{% extends "base.html" %}{% block content %}{% endblock %}'
        )

        @org_page(Action.INSTANCE_VIEW)
        def layout_view(request):
            """The pages' base layout (navigation, organisation switcher, banner) with an empty
            body, through the same decorator as the instances page."""
            return HttpResponse(empty_layout.render({}, request))

        root_urls.urlpatterns += [
            path("bench-trivial/", lambda request: HttpResponse("ok")),
            path("bench-layout/", layout_view),
        ]
        _, secret = account_services.api_key_create(
            actor=Actor.system(world.org), name="bench", role="viewer"
        )
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        page = Client()
        page.force_login(world.owner)
        api.get("/api/v1/instances")
        page.get("/instances/")
        page.get("/bench-layout/")

        def measure(fetch):
            with QueryCounter() as counted:
                status = fetch().status_code
            return median_ms(fetch, repeat=15), counted.n, status

        base_ms, base_q, _ = measure(lambda: page.get("/bench-trivial/"))
        layout_ms, layout_q, _ = measure(lambda: page.get("/bench-layout/"))
        print(
            f"1,000 instances in one organisation; trivial Django view (logged in): {base_ms:.2f} ms, "
            f"{base_q} queries; the base layout with an empty body: {layout_ms:.2f} ms, "
            f"{layout_q} queries (x{layout_ms / base_ms:.1f} the trivial view)"
        )
        ms, queries, status = measure(lambda: api.get("/api/v1/instances"))
        print(
            f"  {'GET /api/v1/instances (page of 50)':38s} {ms:7.2f} ms  {queries} queries  "
            f"x{ms / base_ms:.1f} the trivial view  (HTTP {status})"
        )
        ms, queries, status = measure(lambda: page.get("/instances/"))
        print(
            f"  {'GET /instances/ (page of 25)':38s} {ms:7.2f} ms  {queries} queries  "
            f"x{ms / layout_ms:.2f} the empty layout, x{ms / base_ms:.1f} the trivial view  "
            f"(HTTP {status})"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
