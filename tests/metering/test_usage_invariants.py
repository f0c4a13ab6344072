"""Usage from the lifecycle is exact: hourly records add up to the running seconds, with no gap
or overlap, across hour, day and month boundaries; closing again or rebuilding changes nothing."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.compute.lifecycle import TRANSITIONS, State
from portal.compute.models import Instance, InstanceEvent
from portal.metering import services
from portal.metering.lifecycle_usage import (
    BILLED_RUNNING,
    COMPUTE,
    instance_usage,
    seconds,
    segments,
)
from portal.metering.models import UsageRecord

# A month end inside the span, so hours, days and a month are crossed.
T0 = datetime(2026, 1, 31, 22, 17, 3, 250_000, tzinfo=UTC)
NEXT = {state: sorted(t for s, t in TRANSITIONS if s == state) for state in State}


@st.composite
def lifecycles(draw):
    """A random legal lifecycle: (time, state) steps starting at ``T0`` in ``pending``."""
    steps = [(T0, State.PENDING.value)]
    state, moment = State.PENDING, T0
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        choices = NEXT[state]
        if not choices:
            break
        state = draw(st.sampled_from(choices))
        moment = moment + timedelta(
            seconds=draw(st.integers(min_value=0, max_value=60 * 60 * 30)),
            microseconds=draw(st.integers(min_value=0, max_value=999_999)),
        )
        steps.append((moment, state.value))
    return steps


def expected_running_seconds(steps, until) -> Decimal:
    return sum(
        (seconds(s.end - s.start) for s in segments(steps, until) if s.state in BILLED_RUNNING),
        Decimal(0),
    )


@settings(max_examples=300, deadline=None)
@given(lifecycles(), st.integers(min_value=1, max_value=72))
def test_hourly_pieces_add_up_to_the_running_seconds(steps, extra_hours):
    until = steps[-1][0] + timedelta(hours=extra_hours)
    usage = instance_usage(
        steps, disk_gb=100, window_start=T0 - timedelta(hours=1), window_end=until
    )
    compute = {hour: q for (meter, hour, _period), q in usage.items() if meter == COMPUTE}
    assert sum(compute.values(), Decimal(0)) == expected_running_seconds(steps, until)
    for hour, quantity in compute.items():
        assert hour.minute == hour.second == hour.microsecond == 0
        assert Decimal(0) < quantity <= Decimal(3600)
    # Any split of the window into pieces gives the same total (no gap, no overlap).
    middle = T0 + (until - T0) / 2
    first = instance_usage(steps, disk_gb=100, window_start=T0, window_end=middle)
    second = instance_usage(steps, disk_gb=100, window_start=middle, window_end=until)
    merged = {}
    for part in (first, second):
        for key, q in part.items():
            merged[key] = merged.get(key, Decimal(0)) + q
    assert merged == {k: v for k, v in usage.items()}


@pytest.fixture
def instance_row(db):
    from tests.factories import World

    world = World()
    from portal.compute import services as compute_services
    from portal.provisioning import reset_backends

    reset_backends()
    instance, _ = compute_services.instance_launch(actor=world.actor(), request=world.request())
    return instance


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=lifecycles())
def test_closed_records_equal_the_exact_running_seconds_and_closing_again_changes_nothing(
    instance_row, steps
):
    InstanceEvent.objects.filter(instance=instance_row).delete()
    UsageRecord.objects.all().delete()
    from portal.metering.models import ClosedHour

    ClosedHour.objects.all().delete()
    InstanceEvent.objects.bulk_create(
        InstanceEvent(
            instance=instance_row,
            created_at=moment,
            to_state=state,
            actor_label="test",
            reason="test",
        )
        for moment, state in steps
    )
    Instance.objects.filter(pk=instance_row.pk).update(
        created_at=T0, terminated_at=None, state="running"
    )
    end = steps[-1][0] + timedelta(hours=2)
    with time_machine.travel(end, tick=False):
        hour = T0.replace(minute=0, second=0, microsecond=0)
        while hour + timedelta(hours=1) <= end:
            services.usage_close_hour(hour_start=hour)
            hour += timedelta(hours=1)
        records = UsageRecord.objects.filter(subject_id=str(instance_row.pk), meter__key=COMPUTE)
        total = sum((r.quantity for r in records), Decimal(0))
        assert total == expected_running_seconds(steps, hour)
        snapshot = sorted(UsageRecord.objects.values_list("meter__key", "hour_start", "quantity"))
        # closing the same hours again, and rebuilding the range, change nothing
        services.usage_close_hour(hour_start=T0.replace(minute=0, second=0, microsecond=0))
        result = services.usage_rebuild(start=T0 - timedelta(hours=1), end=hour)
        assert result["created"] == result["fixed"] == result["removed"] == 0
        assert (
            sorted(UsageRecord.objects.values_list("meter__key", "hour_start", "quantity"))
            == snapshot
        )
        # closing the whole range at once writes the same records and closed hours
        closed = sorted(ClosedHour.objects.values_list("hour_start", "records"))
        UsageRecord.objects.all().delete()
        ClosedHour.objects.all().delete()
        first = T0.replace(minute=0, second=0, microsecond=0)
        assert services.usage_close_hours(start=first, end=hour) == len(snapshot)
        assert (
            sorted(UsageRecord.objects.values_list("meter__key", "hour_start", "quantity"))
            == snapshot
        )
        assert sorted(ClosedHour.objects.values_list("hour_start", "records")) == closed
        assert services.usage_close_hours(start=first, end=hour) == 0
        with pytest.raises(ValueError, match="has not ended yet"):
            services.usage_close_hours(start=first, end=hour + timedelta(hours=3))


def test_live_usage_includes_the_open_hour(instance_row):
    start = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    InstanceEvent.objects.filter(instance=instance_row).delete()
    InstanceEvent.objects.bulk_create(
        [
            InstanceEvent(
                instance=instance_row,
                created_at=start,
                to_state="pending",
                actor_label="t",
                reason="t",
            ),
            InstanceEvent(
                instance=instance_row,
                created_at=start + timedelta(minutes=5),
                to_state="running",
                actor_label="t",
                reason="t",
            ),
        ]
    )
    Instance.objects.filter(pk=instance_row.pk).update(created_at=start, state="running")
    with time_machine.travel(start + timedelta(hours=2, minutes=30), tick=False):
        services.usage_close_hour(hour_start=start)
        # 11:00-12:00 is not closed yet (the task is late): open usage covers it and 12:00-12:30
        open_records = services.usage_open(organization=instance_row.organization)
        compute = {r.hour_start.hour: r.quantity for r in open_records if r.meter.key == COMPUTE}
        assert compute == {11: Decimal(3600), 12: Decimal(1800)}
        closed = UsageRecord.objects.get(meter__key=COMPUTE, subject_id=str(instance_row.pk))
        assert closed.quantity == Decimal(55 * 60)


def test_closing_catches_up_every_missed_hour_oldest_first(instance_row):
    from portal.metering.models import ClosedHour

    start = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
    InstanceEvent.objects.filter(instance=instance_row).delete()
    InstanceEvent.objects.create(
        instance=instance_row, created_at=start, to_state="running", actor_label="t", reason="t"
    )
    Instance.objects.filter(pk=instance_row.pk).update(created_at=start, state="running")
    with time_machine.travel(start + timedelta(hours=1, minutes=10), tick=False):
        services.usage_close_recent()
    # the task then misses six hours
    with time_machine.travel(start + timedelta(hours=7, minutes=30), tick=False):
        services.usage_close_recent()
        hours = list(ClosedHour.objects.order_by("hour_start").values_list("hour_start", flat=True))
        assert hours == [start + timedelta(hours=h) for h in range(7)]
        records = UsageRecord.objects.filter(subject_id=str(instance_row.pk), meter__key=COMPUTE)
        assert sum(r.quantity for r in records) == Decimal(7 * 3600)
        live = services.usage_open(organization=instance_row.organization)
        assert [r.quantity for r in live if r.meter.key == COMPUTE] == [Decimal(1800)]
