"""The billing check of a launch does not grow in queries or time with what the organisation
runs.

``billing.spend.services.launch_check`` (overdue invoices; the burn figure of
``billing.ledger.burn``: balance, usage not debited and committed burn in one row, with the
billing profile's limits) is measured with 1, 10, 100 and 1,000 instances running in the
organisation: its query count and median time, against the full recomputation it replaces
(``credit_reserve``: the balance less usage not debited, replayed from every instance's
lifecycle, and the committed burn), measured in the same run, and the query count of a whole
``instance_launch``. The query counts must be the same at every size (the script exits 1 if they
are not).

Run: DEBUG=1 [DATABASE_URL=postgres://...] .venv/bin/python bench/launch_check.py [--sizes 1,10,100,1000]
Uses a throwaway test database.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DEFAULT_GPU_QUOTA", "100000")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")  # the sync tasks are not measured

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,10,100,1000")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))

    from django.conf import settings

    settings.PROVISIONING_BACKENDS["memory"] = {
        "BACKEND": "portal.provisioning.simulated.InMemoryBackend"
    }
    settings.PROVISIONING_BACKEND = "memory"
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from billing.spend.services import credit_reserve, launch_check
        from portal.compute import services
        from tests import factories
        from tests.factories import World

        print(f"database: {connection.vendor}")
        per_host = 8 * 7  # mig_1g_18gb slices of an 8-GPU H200 host
        world = World(hosts=sizes[-1] // per_host + 2, gpus_per_host=8, credit_amount="1000000")
        factories.credit(world.org, "1000000")
        actor = world.actor()
        instance_type, region = world.types["mig_1g_18gb"], world.region
        running = 0
        rows = []
        for size in sizes:
            while running < size:
                instance, _ = services.instance_launch(
                    actor=actor,
                    request=world.request(name=f"run-{running}", instance_type="mig_1g_18gb"),
                )
                services.instance_sync(instance_id=instance.pk)  # pending -> running
                running += 1

            def check():
                launch_check(organization=world.org, instance_type=instance_type, region=region)

            connection.queries_log.clear()  # the log keeps 9,000: the fleet's launches filled it
            with CaptureQueriesContext(connection) as check_queries:
                check()
            times = []
            for _ in range(5):
                began = time.perf_counter()
                check()
                times.append((time.perf_counter() - began) * 1000)
            full = []
            for _ in range(5):
                began = time.perf_counter()
                credit_reserve(world.org)
                full.append((time.perf_counter() - began) * 1000)
            connection.queries_log.clear()
            with CaptureQueriesContext(connection) as launch_queries:
                services.instance_launch(
                    actor=actor,
                    request=world.request(name=f"probe-{size}", instance_type="mig_1g_18gb"),
                )
            running += 1  # the probe is pending: it counts in the committed burn too
            rows.append(
                (
                    size,
                    len(check_queries),
                    statistics.median(times),
                    statistics.median(full),
                    len(launch_queries),
                )
            )
        print(
            f"{'running':>8} {'check queries':>14} {'check ms':>9} {'full recomputation ms':>22}"
            f" {'launch queries':>15}"
        )
        for size, queries, ms, full_ms, launch in rows:
            print(f"{size:>8} {queries:>14} {ms:>9.1f} {full_ms:>22.1f} {launch:>15}")
        constant = len({r[1] for r in rows}) == 1 and len({r[4] for r in rows}) == 1
        print("query counts constant:", "yes" if constant else "NO")
        return 0 if constant else 1
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main())
