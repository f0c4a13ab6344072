"""GET /api/v1/usage: the same figures however they are grouped, priced exactly, live."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from portal.compute import services as compute
from portal.metering import services
from tests.factories import World

pytestmark = pytest.mark.django_db
START = datetime(2026, 5, 3, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _on_the_memory_backend(memory_backend):
    """Every test here runs instances on the in-memory backend (tests/conftest.py)."""


@pytest.fixture
def usage(key_client):
    """One gpu_1x_h200 (3.50 USD/h) runs 09:30 → 12:00, then is stopped and kept for 1 hour."""
    with time_machine.travel(START - timedelta(days=2), tick=False):
        world = World()
    with time_machine.travel(START, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(START + timedelta(hours=2, minutes=30))
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(START + timedelta(hours=3, minutes=30))
        for hour in range(9, 12):
            services.usage_close_hour(hour_start=START.replace(hour=hour, minute=0))
    return world, key_client("viewer", organization=world.org)


def test_usage_by_every_grouping_agrees_and_is_priced_exactly(usage):
    _world, client = usage
    now = START + timedelta(hours=3, minutes=30)
    with time_machine.travel(now, tick=False):
        totals = {}
        for group_by in ("day", "instance", "instance_type", "meter"):
            body = client.get(
                f"/api/v1/usage?start=2026-05-01T00:00:00Z&end=2026-05-04T00:00:00Z&group_by={group_by}"
            ).json()
            totals[group_by] = Decimal(body["total_cost"])
        assert len(set(totals.values())) == 1
        by_meter = client.get(
            "/api/v1/usage?start=2026-05-01T00:00:00Z&end=2026-05-04T00:00:00Z&group_by=meter"
        ).json()
    rows = {r["key"]: r for r in by_meter["rows"]}
    # 2.5 hours running, priced at 3.50 per hour: 8.75 exactly
    assert Decimal(rows["instance.seconds"]["quantities"]["instance.seconds"]) == Decimal(9000)
    assert Decimal(rows["instance.seconds"]["cost"]) == Decimal("8.75")
    # kept boot disk: 100 GB for 1 hour at 0.10 per GB-month of 730 hours (the stopped hour is
    # not closed: live figures include it)
    disk = Decimal(rows["instance.disk_gb_seconds"]["quantities"]["instance.disk_gb_seconds"])
    assert disk == Decimal(100 * 3600)
    assert Decimal(rows["instance.disk_gb_seconds"]["cost"]) == disk * Decimal("0.10") / Decimal(
        730 * 3600
    )
    assert by_meter["currency"] == "USD"


def test_usage_days_and_bad_ranges(usage):
    _world, client = usage
    body = client.get(
        "/api/v1/usage?start=2026-05-01T00:00:00Z&end=2026-05-10T00:00:00Z&group_by=day"
    ).json()
    # running on the 3rd; the stopped instance's boot disk is kept (and accrues) every day after
    assert [r["key"] for r in body["rows"]] == [f"2026-05-{day:02d}" for day in range(3, 10)]
    bad = client.get("/api/v1/usage?start=2026-05-10T00:00:00Z&end=2026-05-01T00:00:00Z")
    assert bad.status_code == 400 and "end" in bad.json()["error"]["details"]
    too_long = client.get("/api/v1/usage?start=2020-01-01T00:00:00Z&end=2026-05-01T00:00:00Z")
    assert too_long.status_code == 400
    assert client.get("/api/v1/usage?group_by=planet").status_code == 400


def test_the_first_hour_of_a_new_price_is_charged_at_that_price(memory_backend):
    """A type priced at 10:20 and run from 10:30 is charged for 10:30-11:00, not free."""
    start = datetime(2026, 8, 1, 10, 20, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        world = World()  # prices take effect now, in the middle of the hour
        clock.move_to(start + timedelta(minutes=10))
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(start + timedelta(hours=1))
        from portal.metering.selectors import usage_summary

        summary = usage_summary(
            organization=world.org, start=start - timedelta(hours=1), end=start + timedelta(hours=1)
        )
    assert summary.total_cost == Decimal("3.50") * 30 * 60 / 3600 + Decimal("3.50") * 20 * 60 / 3600
