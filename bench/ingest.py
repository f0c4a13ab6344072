"""Usage events at scale.

1. Ingestion rate: CloudEvents per second through ``POST /api/v1/usage-events`` in batches of
   1,000 (``application/cloudevents-batch+json``, an API key of role member, the whole Django
   stack in-process: middleware, authentication, throttling, parsing, validation, insert), against
   the same rows written straight into the table with PostgreSQL ``COPY`` (psycopg's
   ``cursor.copy``, one transaction per 1,000 rows) as the baseline, reported as a ratio. A
   re-sent batch (all duplicates) is timed too.
2. Closing one hour: ``services.usage_close_hour`` with 10,000 instances running through the
   hour (one ``running`` event each, before the hour), alone; then the next hour, still open,
   with the same fleet and 30,000 events posted into it through the endpoint first (a closed
   hour refuses events, so they cannot be added to the hour just closed).

Run: DEBUG=1 DATABASE_URL=postgres://... .venv/bin/python bench/ingest.py [--batches 30]
     [--instances 10000] [--profile]
``--profile`` prints the top of a cProfile of the endpoint. Uses a throwaway test database
(COPY needs PostgreSQL; on SQLite the baseline is a multi-row INSERT). Queries are not logged
while measuring (``setup_test_environment(debug=False)``), as in production.
"""

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

BATCH = 1000
SUBJECTS = 200


def make_batches(batches: int, hour: datetime, tag: str) -> list[list[dict]]:
    """``batches`` lists of 1,000 distinct events spread over ``hour`` and 200 subjects."""
    result = []
    for b in range(batches):
        events = []
        for i in range(BATCH):
            n = b * BATCH + i
            events.append(
                {
                    "specversion": "1.0",
                    "id": f"{tag}-{n}",
                    "source": "bench/inference",
                    "type": "bench.tokens",
                    "subject": f"endpoint-{n % SUBJECTS}",
                    "time": (hour + timedelta(microseconds=n * 97)).isoformat(),
                    "data": {"value": n % 5000},
                }
            )
        result.append(events)
    return result


def truncate_events() -> None:
    from portal.metering.models import UsageEvent

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {UsageEvent._meta.db_table}")
    else:
        UsageEvent.objects.all().delete()


def endpoint_rate(client, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Events per second posting ``bodies`` one after another; per-request milliseconds."""
    times = []
    for body in bodies:
        start = time.perf_counter()
        response = client.post(
            "/api/v1/usage-events", body, content_type="application/cloudevents-batch+json"
        )
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.content[:300]
        assert response.json()["accepted"] + response.json()["duplicates"] == BATCH
    return len(bodies) * BATCH / sum(times), [t * 1000 for t in times]


def copy_rate(batches: list[list[dict]], org, meter) -> float:
    """The same rows, already parsed, written with COPY (or a multi-row INSERT on SQLite)."""
    from portal.metering.models import UsageEvent

    table = UsageEvent._meta.db_table
    columns = [
        "organization_id",
        "source",
        "event_id",
        "meter_id",
        "subject",
        "time",
        "value",
        "data",
        "received_at",
    ]
    rows = [
        [
            (
                org.pk,
                e["source"],
                e["id"],
                meter.pk,
                e["subject"],
                datetime.fromisoformat(e["time"]),
                e["data"]["value"],
                json.dumps(e["data"]),
                datetime.now(UTC),
            )
            for e in events
        ]
        for events in batches
    ]
    total = 0.0
    for batch in rows:
        start = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                raw = cursor.cursor  # psycopg's own cursor
                with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
            else:
                marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
                head = f"INSERT INTO {table} ({', '.join(columns)})"
                for chunk in range(0, len(batch), 100):
                    part = batch[chunk : chunk + 100]
                    cursor.execute(
                        " ".join([head, "VALUES", ", ".join([marks] * len(part))]),
                        [str(v) if isinstance(v, datetime) else v for row in part for v in row],
                    )
        total += time.perf_counter() - start
    return len(rows) * BATCH / total


def profile(client, bodies: list[bytes]) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies:
        client.post("/api/v1/usage-events", body, content_type="application/cloudevents-batch+json")
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(35)
    stats.sort_stats("tottime").print_stats(25)


def build_fleet(instances: int, hour: datetime):
    """``instances`` instances running since before ``hour`` (set-up only, bulk inserted)."""
    from portal.catalog import services as catalog_services
    from portal.catalog.models import GpuModel, Image
    from portal.catalog.synthetic import DATA_DIR
    from portal.compute.models import Instance, InstanceEvent
    from tests import factories

    if not GpuModel.objects.exists():
        catalog_services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    region = catalog_services.region_ensure(code="bench-1", name="Bench 1", country="US")
    h200 = GpuModel.objects.get(code="h200-sxm-141gb")
    instance_type, _ = catalog_services.instance_type_upsert(
        name="gpu_1x_h200", gpu_model=h200, gpu_count=1, mig_profile=None, vcpus=4, ram_gib=32
    )
    image = Image.objects.create(name="bench-image", os="Ubuntu 24.04", is_default=True)
    orgs = [factories.organization() for _ in range(10)]
    since = hour - timedelta(hours=2)
    rows = Instance.objects.bulk_create(
        (
            Instance(
                organization=orgs[i % len(orgs)],
                name=f"box-{i}",
                instance_type=instance_type,
                region=region,
                image=image,
                disk_gb=100,
                state="running",
                backend="simulated",
                created_at=since,
                state_changed_at=since + timedelta(minutes=1),
                running_since=since + timedelta(minutes=1),
            )
            for i in range(instances)
        ),
        batch_size=2000,
    )
    InstanceEvent.objects.bulk_create(
        (
            event
            for instance in rows
            for event in (
                InstanceEvent(
                    instance=instance,
                    created_at=since,
                    to_state="pending",
                    actor_label="bench",
                    reason="launch",
                ),
                InstanceEvent(
                    instance=instance,
                    created_at=since + timedelta(minutes=1),
                    from_state="provisioning",
                    to_state="running",
                    actor_label="bench",
                    reason="backend reported running",
                ),
            )
        ),
        batch_size=4000,
    )


def close_hour_seconds(hour: datetime) -> tuple[float, int]:
    from portal.metering import services
    from portal.metering.models import ClosedHour, UsageRecord

    UsageRecord.objects.filter(hour_start=hour).delete()
    ClosedHour.objects.filter(hour_start=hour).delete()
    start = time.perf_counter()
    created = services.usage_close_hour(hour_start=hour)
    return time.perf_counter() - start, created


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30, help="batches of 1,000 to time")
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    from django.conf import settings

    setup_test_environment(debug=False)
    settings.ALLOWED_HOSTS = ["*"]
    if (
        connection.vendor == "postgresql"
    ):  # a name of its own: other runs on the server are left alone
        connection.settings_dict.setdefault("TEST", {})["NAME"] = f"test_bench_ingest_{os.getpid()}"
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from django.core.cache import cache
        from django.test import Client

        from portal.metering.lifecycle_usage import hour_floor
        from portal.metering.models import Meter, UsageEvent
        from tests import factories

        print(f"database: {connection.vendor}")
        org = factories.organization()
        meter = Meter.objects.create(key="bench.tokens", name="Tokens", unit="token")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {factories.api_key_secret(org, 'member')}")
        hour = hour_floor(datetime.now(UTC)) - timedelta(hours=2)

        warm = [json.dumps(b).encode() for b in make_batches(2, hour, "warm")]
        endpoint_rate(client, warm)
        truncate_events()

        batches = make_batches(args.batches, hour, "evt")
        bodies = [json.dumps(b).encode() for b in batches]
        cache.clear()  # the per-key API throttle (1,200 requests a minute)
        rate, per_request = endpoint_rate(client, bodies)
        assert UsageEvent.objects.count() == args.batches * BATCH
        cache.clear()
        resent, _ = endpoint_rate(client, bodies[: max(1, args.batches // 3)])
        assert UsageEvent.objects.count() == args.batches * BATCH
        print(
            f"POST /api/v1/usage-events, {args.batches} batches of {BATCH}: {rate:,.0f} events/s "
            f"(median {statistics.median(per_request):.1f} ms a batch); "
            f"re-sent (all duplicates): {resent:,.0f} events/s"
        )

        truncate_events()
        baseline = copy_rate(batches, org, meter)
        assert UsageEvent.objects.count() == args.batches * BATCH
        how = "COPY" if connection.vendor == "postgresql" else "multi-row INSERT"
        print(f"baseline, the same rows with {how}: {baseline:,.0f} events/s")
        print(f"ratio: the endpoint takes {baseline / rate:.1f}x the baseline's time")

        if args.profile:
            truncate_events()
            cache.clear()
            profile(client, [json.dumps(b).encode() for b in make_batches(10, hour, "prof")])

        truncate_events()
        start = time.perf_counter()
        build_fleet(args.instances, hour)
        print(
            f"(built {args.instances:,} running instances in {time.perf_counter() - start:.1f} s)"
        )
        alone, created = close_hour_seconds(hour)
        print(
            f"usage_close_hour, {args.instances:,} running instances: {alone:.2f} s, "
            f"{created:,} records"
        )
        # The next hour, still open: the service refuses events for an hour already closed.
        # The same fleet runs through it; its events are posted before the hour is closed.
        next_hour = hour + timedelta(hours=1)
        cache.clear()
        endpoint_rate(
            client, [json.dumps(b).encode() for b in make_batches(args.batches, next_hour, "next")]
        )
        seconds, created = close_hour_seconds(next_hour)
        assert created >= args.instances + SUBJECTS, created
        print(
            f"usage_close_hour, {args.instances:,} instances + {args.batches * BATCH:,} events "
            f"({SUBJECTS} subjects): {seconds:.2f} s, {created:,} records "
            f"({seconds / alone:.1f}x the hour without events)"
        )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
