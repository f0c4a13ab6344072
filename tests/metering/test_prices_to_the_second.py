"""Prices to the second: a price takes effect at the exact moment of its ``effective_from``. An
hour in which one does is recorded per price period and rated at each price; the ledger, the
live balance, the usage API and the invoice agree to the cent."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.invoicing import services as invoicing
from billing.ledger import services as ledger
from billing.models import LedgerEntry
from portal.accounts.types import Actor
from portal.catalog import services as catalog_services
from portal.catalog.models import Price
from portal.compute import services as compute
from portal.compute.lifecycle import BILLED_RUNNING, TRANSITIONS, State
from portal.compute.models import Instance, InstanceEvent
from portal.metering import services
from portal.metering.lifecycle_usage import COMPUTE, segments
from portal.metering.models import Aggregation, ClosedHour, Meter, MeterPrice, UsageRecord
from portal.metering.rating import Rater
from tests import factories
from tests.factories import World

pytestmark = pytest.mark.django_db
H = timedelta(hours=1)
T0 = datetime(2026, 5, 31, 21, 0, tzinfo=UTC)  # a month end inside the span
NEXT = {state: sorted(t for s, t in TRANSITIONS if s == state) for state in State}
SPAN = 6 * 3600  # seconds of lifecycle drawn after T0


@st.composite
def lifecycles(draw):
    """A random legal lifecycle in whole seconds from ``T0``."""
    steps = [(T0, State.PENDING.value)]
    state, moment = State.PENDING, T0
    for _ in range(draw(st.integers(min_value=1, max_value=10))):
        choices = NEXT[state]
        if not choices:
            break
        state = draw(st.sampled_from(choices))
        moment = moment + timedelta(seconds=draw(st.integers(min_value=1, max_value=SPAN // 4)))
        steps.append((moment, state.value))
    return steps


prices = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=SPAN),  # seconds after T0 it takes effect
        st.integers(min_value=1, max_value=99_999),  # cents an hour
    ),
    max_size=8,
    unique_by=lambda change: change[0],
)


@pytest.fixture
def instance_row(db):
    from portal.provisioning import reset_backends

    world = World()
    reset_backends()
    instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
    return instance


def _price_at(history: list[tuple[datetime, Decimal]], moment: datetime) -> Decimal:
    return [amount for start, amount in history if start <= moment][-1]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=lifecycles(), changes=prices)
def test_rated_records_equal_a_sum_over_every_second_at_the_price_then(
    instance_row, steps, changes
):
    """Random price histories with arbitrary effective seconds and random lifecycles: the
    closed records, rated, cost exactly what summing every running second at the price in
    force in that second costs."""
    InstanceEvent.objects.filter(instance=instance_row).delete()
    UsageRecord.objects.all().delete()
    ClosedHour.objects.all().delete()
    type_id, region_id = instance_row.instance_type_id, instance_row.region_id
    Price.objects.filter(instance_type_id=type_id, region_id=region_id).delete()
    history = [(T0 - timedelta(days=1), Decimal("3.50"))]
    history += sorted(
        (T0 + timedelta(seconds=offset), Decimal(cents) / 100) for offset, cents in changes
    )
    history.sort()
    Price.objects.bulk_create(
        Price(
            instance_type_id=type_id,
            region_id=region_id,
            currency="USD",
            on_demand_per_hour=amount,
            effective_from=start,
        )
        for start, amount in history
    )
    InstanceEvent.objects.bulk_create(
        InstanceEvent(
            instance=instance_row, created_at=moment, to_state=state, actor_label="t", reason="t"
        )
        for moment, state in steps
    )
    Instance.objects.filter(pk=instance_row.pk).update(created_at=T0, state="running")
    end = T0 + timedelta(seconds=SPAN) + 2 * H
    until = end - H
    with time_machine.travel(end, tick=False):
        hour = T0
        while hour < until:
            services.usage_close_hour(hour_start=hour)
            hour += H
        records = list(
            UsageRecord.objects.filter(
                subject_id=str(instance_row.pk), meter__key=COMPUTE
            ).select_related("meter")
        )
    # brute force: every running second at the price in force in it (price-seconds, exactly)
    expected = Decimal(0)
    for segment in segments(steps, until):
        if segment.state not in BILLED_RUNNING:
            continue
        second = segment.start
        while second < segment.end:
            expected += _price_at(history, second)
            second += timedelta(seconds=1)
    rated = sum((r.quantity * _price_at(history, r.period_start) for r in records), Decimal(0))
    assert rated == expected
    rater = Rater("USD")
    cost = sum((rater.cost(r) for r in records), Decimal(0))
    assert abs(cost - expected / 3600) < Decimal("1e-18")
    for record in records:  # a record never spans a price change
        later = [start for start, _ in history if record.period_start < start]
        assert (
            not later
            or later[0] >= record.hour_start + H
            or record.quantity <= Decimal((later[0] - record.period_start).total_seconds())
        )


def test_a_price_set_for_14_30_is_charged_from_14_30_everywhere(
    memory_backend, django_capture_on_commit_callbacks
):
    """Today's example: an instance runs 22:00-23:00 on the month's last day at 3.50/h; a price
    of 7.00 takes effect at 22:30. The hour costs 1.75 + 3.50 = 5.25: live, in the usage API, in
    the ledger and on the invoice, which shows each price with its period."""
    start = datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    with time_machine.travel(datetime(2026, 5, 20, tzinfo=UTC), tick=False):
        world = World(credit_amount="100")  # priced at 3.50 since before the month
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request("box"))
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(start + timedelta(minutes=10))
        catalog_services.price_set(
            instance_type=world.types["gpu_1x_h200"],
            region=world.region,
            currency="USD",
            on_demand_per_hour=Decimal("7.00"),
            effective_from=start + timedelta(minutes=30),
        )
        clock.move_to(start + timedelta(minutes=45))  # 1.75 + 15 min at 7.00 = 3.50 so far
        assert ledger.balance(world.org) == Decimal("96.50")
        clock.move_to(start + H)
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
        compute.instance_sync(instance_id=instance.pk)
        assert ledger.balance(world.org) == Decimal("94.75")  # before the hour is closed
    after = start + 2 * H + timedelta(minutes=15)
    with time_machine.travel(after, tick=False):
        services.usage_close_hour(hour_start=start)
        services.usage_close_hour(hour_start=start + H)
        records = UsageRecord.objects.filter(meter__key=COMPUTE).order_by("period_start")
        assert [(r.period_start, r.quantity) for r in records] == [
            (start, Decimal(1800)),
            (start + timedelta(minutes=30), Decimal(1800)),
        ]
        ledger.usage_debit_pending()
        debits = LedgerEntry.objects.filter(account__organization=world.org, kind="usage")
        assert sum(debits.values_list("amount", flat=True)) == Decimal("-5.25")
        assert ledger.balance(world.org) == Decimal("94.75")
        api = factories.api_client_for(world.org, "owner")
        usage = api.get(
            "/api/v1/usage",
            {"start": "2026-06-30T00:00:00Z", "end": "2026-07-01T00:00:00Z", "group_by": "day"},
        ).json()
        assert Decimal(usage["total_cost"]) == Decimal("5.25"), json.dumps(usage)
    with (
        time_machine.travel(datetime(2026, 7, 1, 1, 0, tzinfo=UTC), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        invoice = invoicing.invoice_finalize(
            invoicing.invoice_draft_refresh(world.org, start.date().replace(day=1)),
            actor=Actor.system(world.org),
        )
    lines = [(x.description, x.quantity, x.unit_price, x.amount) for x in invoice.lines.all()]
    assert lines == [
        (
            "gpu_1x_h200 in us-east-1, price until 2026-06-30 22:30 UTC",
            Decimal("0.5"),
            Decimal("3.50"),
            Decimal("1.75"),
        ),
        (
            "gpu_1x_h200 in us-east-1, price from 2026-06-30 22:30 UTC",
            Decimal("0.5"),
            Decimal("7.00"),
            Decimal("3.50"),
        ),
    ]
    assert invoice.subtotal == Decimal("5.25")


def test_an_operator_meter_price_takes_effect_at_its_second(db, key_client):
    """Counted meters split their events at the change; a gauge's figure is shared by time."""
    hour = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
    tokens = Meter.objects.create(key="tokens.generated", name="Tokens", unit="token")
    peak = Meter.objects.create(
        key="gpu.memory_peak", name="Peak memory", unit="GB", aggregation=Aggregation.MAX
    )
    change = hour + timedelta(minutes=20, seconds=30)
    for meter, before, after in ((tokens, "0.001", "0.002"), (peak, "0.06", "0.12")):
        MeterPrice.objects.create(
            meter=meter, currency="USD", price_per_unit=before, effective_from=hour - H
        )
        MeterPrice.objects.create(
            meter=meter, currency="USD", price_per_unit=after, effective_from=change
        )
    client = key_client("member")
    events = [
        ("tokens.generated", hour + timedelta(minutes=5), 1000),
        ("tokens.generated", change - timedelta(microseconds=1), 500),
        ("tokens.generated", change, 300),
        ("tokens.generated", hour + timedelta(minutes=59), 200),
        ("gpu.memory_peak", hour + timedelta(minutes=1), 40),
        ("gpu.memory_peak", hour + timedelta(minutes=50), 72),
    ]
    body = [
        {"specversion": "1.0", "id": f"e{i}", "source": "s", "type": kind, "subject": "job-1",
         "time": moment.isoformat(), "data": value}
        for i, (kind, moment, value) in enumerate(events)
    ]  # fmt: skip
    with time_machine.travel(hour + timedelta(minutes=59, seconds=30), tick=False):
        response = client.post(
            "/api/v1/usage-events",
            json.dumps(body),
            content_type="application/cloudevents-batch+json",
        )
        assert response.json()["accepted"] == 6, response.content
    with time_machine.travel(hour + H + timedelta(minutes=15), tick=False):
        services.usage_close_hour(hour_start=hour)
    counted = UsageRecord.objects.filter(meter=tokens).order_by("period_start")
    assert [(r.period_start, r.quantity) for r in counted] == [
        (hour, Decimal(1500)),
        (change, Decimal(500)),
    ]
    shared = UsageRecord.objects.filter(meter=peak).order_by("period_start")
    # 72 GB for the hour: 1230 of 3600 seconds at the first price, the rest at the second
    assert [(r.period_start, r.quantity) for r in shared] == [
        (hour, Decimal("24.600000")),
        (change, Decimal("47.400000")),
    ]
    rater = Rater("USD")
    costs = [rater.cost(r) for r in [*counted, *shared]]
    assert costs == [
        Decimal("1.500"),
        Decimal("1.000"),
        Decimal("1.476000"),
        Decimal("5.688000"),
    ]
