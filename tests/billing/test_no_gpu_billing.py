"""No-GPU mode in the money: its running time is metered apart from running with GPUs, exactly to
the second across stops and starts, rated at the region's no-GPU price (never the GPU price),
debited, put on its own invoice line, and reserved by the start's credit check."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from billing.errors import BillingErrorCode
from billing.invoicing import services as invoicing
from billing.ledger import burn
from billing.ledger import services as ledger
from billing.models import LedgerEntry
from portal.compute import services as compute
from portal.compute.lifecycle import State
from portal.compute.models import Instance
from portal.errors import PortalError
from portal.metering import services as metering
from portal.metering.lifecycle_usage import COMPUTE, NO_GPU
from portal.metering.models import MeterPrice, UsageRecord
from portal.metering.rating import Rater
from portal.metering.selectors import committed_burn, usage_summary
from portal.metering.services import builtin_meters
from portal.money import at_rating_precision
from tests.factories import World, settle

pytestmark = pytest.mark.django_db
T0 = datetime(2027, 1, 12, 10, 0, tzinfo=UTC)  # after the prices the world sets now
NO_GPU_PRICE = Decimal("0.80")  # USD per hour; gpu_1x_h200 is 3.50


@pytest.fixture
def world(memory_backend):
    world = World()
    MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU],
        currency="USD",
        price_per_unit=NO_GPU_PRICE,
        effective_from=T0 - timedelta(days=1),
    )
    return world


def act(world, instance, action, gpus=True) -> Instance:
    compute.instance_action(actor=world.actor(), instance_id=instance.pk, action=action, gpus=gpus)
    return settle(instance)


def test_usage_is_split_to_the_second_and_rated_invoiced_and_debited_apart(world):
    with time_machine.travel(T0, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        settle(instance)  # running with GPUs from 10:00:00
        clock.move_to(T0 + timedelta(minutes=30, seconds=7))
        act(world, instance, "stop")
        clock.move_to(T0 + timedelta(minutes=40))
        instance = act(world, instance, "start", gpus=False)  # no GPUs from 10:40:00
        assert instance.state == State.RUNNING and not instance.gpus
        clock.move_to(T0 + timedelta(hours=1, minutes=10, seconds=1))
        act(world, instance, "reboot")  # a reboot stays in no-GPU mode
        clock.move_to(T0 + timedelta(hours=1, minutes=15, seconds=30))
        act(world, instance, "stop")  # until 11:15:30
        clock.move_to(T0 + timedelta(hours=1, minutes=20))
        instance = act(world, instance, "start")  # GPUs again, 11:20:00 to 11:50:00
        assert instance.gpus
        clock.move_to(T0 + timedelta(hours=1, minutes=50))
        act(world, instance, "stop")

        clock.move_to(T0 + timedelta(hours=3))
        metering.usage_close_hours(start=T0, end=T0 + timedelta(hours=2))
        records = {
            (r.meter.key, r.hour_start): r.quantity
            for r in UsageRecord.objects.filter(subject_id=str(instance.pk)).select_related("meter")
            if r.meter.key in (COMPUTE, NO_GPU)
        }
        hour = timedelta(hours=1)
        assert records == {
            (COMPUTE, T0): Decimal("1807"),  # 10:00:00 - 10:30:07
            (NO_GPU, T0): Decimal("1200"),  # 10:40:00 - 11:00:00
            (NO_GPU, T0 + hour): Decimal("930"),  # 11:00:00 - 11:15:30, through the reboot
            (COMPUTE, T0 + hour): Decimal("1800"),  # 11:20:00 - 11:50:00
        }

        # rated: no-GPU seconds at 0.80/h, GPU seconds at 3.50/h, at full precision
        rater = Rater("USD")
        costs = {}
        for record in UsageRecord.objects.filter(subject_id=str(instance.pk)).select_related(
            "meter"
        ):
            costs[record.meter.key] = costs.get(record.meter.key, Decimal(0)) + rater.cost(record)
        places = Decimal("1e-20")
        assert costs[NO_GPU].quantize(places) == (Decimal(2130) * NO_GPU_PRICE / 3600).quantize(
            places
        )  # 0.47333...
        assert costs[COMPUTE].quantize(places) == (Decimal(3607) * Decimal("3.50") / 3600).quantize(
            places
        )

        # the usage page's figures have the no-GPU meter apart
        summary = usage_summary(
            organization=world.org, start=T0, end=T0 + timedelta(hours=2), group_by="meter"
        )
        by_meter = {row.key: row for row in summary.rows}
        assert by_meter[NO_GPU].quantities[NO_GPU] == Decimal(2130)
        assert by_meter[NO_GPU].cost == costs[NO_GPU]

        # and so does the usage page: its own column, in hours
        client = Client()
        client.force_login(world.owner)
        page = client.get("/usage/?start=2027-01-12&end=2027-01-12").content.decode()
        assert '>No-GPU mode <span class="unit">(hours)' in page
        assert '<td class="num">1.00</td><td class="num">0.59</td>' in page  # 3607 s, 2130 s

        # the invoice: its own line, hours at the no-GPU price, rounded once
        lines = invoicing.usage_lines(world.org, date(2027, 1, 1), "USD")
        no_gpu = [line for line in lines if line.meter_key == NO_GPU]
        assert len(no_gpu) == 1
        line = no_gpu[0]
        assert line.description == "No-GPU mode: gpu_1x_h200 in us-east-1"
        assert line.unit == "hour" and line.unit_price == NO_GPU_PRICE
        assert line.quantity == Decimal("0.591667")  # 2130 s
        # each record rated at the rating precision, the line the sum of its records
        assert line.exact_amount == at_rating_precision(
            Decimal(1200) * NO_GPU_PRICE / 3600
        ) + at_rating_precision(Decimal(930) * NO_GPU_PRICE / 3600)
        gpu_line = next(line for line in lines if line.meter_key == COMPUTE)
        assert gpu_line.description == "gpu_1x_h200 in us-east-1"
        assert gpu_line.unit_price == Decimal("3.50")
        assert lines.index(gpu_line) + 1 == lines.index(line)  # beside its type's line

        # the ledger debits each no-GPU record at its no-GPU cost
        ledger.usage_debit_pending()
        debits = LedgerEntry.objects.filter(usage_record__meter__key=NO_GPU)
        assert debits.count() == 2
        total = -sum((d.amount for d in debits), Decimal(0))
        assert abs(total - costs[NO_GPU]) < Decimal("0.01")
        invoice = invoicing.invoice_draft_refresh(world.org, date(2027, 1, 1))
        described = {line.description: line for line in invoice.lines.all()}
        assert described["No-GPU mode: gpu_1x_h200 in us-east-1"].amount == Decimal("0.47")


def test_the_burn_reserves_the_no_gpu_price_and_agrees_with_a_reconciliation(world):
    with time_machine.travel(T0, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        settle(instance)
        act(world, instance, "stop")
        burn.burn_now(world.org)  # the figure exists: changes are folded into it from here
        clock.move_to(T0 + timedelta(minutes=5))
        act(world, instance, "start", gpus=False)
        followed = burn.burn_now(world.org)
        storage = burn.storage_rate(instance.disk_gb, "USD")
        assert followed.committed_per_hour == NO_GPU_PRICE  # not 3.50, and no disk on top
        assert committed_burn(world.org, rater=Rater("USD")) == NO_GPU_PRICE
        burn.burn_reconcile(world.org, locked=True)
        assert burn.burn_now(world.org).committed_per_hour == followed.committed_per_hour
        clock.move_to(T0 + timedelta(minutes=10))
        act(world, instance, "stop")
        assert burn.burn_now(world.org).committed_per_hour == storage


def test_who_cannot_pay_a_gpu_hour_can_still_start_without_gpus(memory_backend):
    world = World(credit_amount="4.00")
    MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU], currency="USD", price_per_unit=NO_GPU_PRICE
    )
    instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
    settle(instance)
    act(world, instance, "stop")
    ledger.ledger_post(
        organization=world.org,
        kind="adjustment",
        amount=Decimal("-3.00"),
        idempotency_key=f"test-spent:{world.org.pk}",
        description="Spent elsewhere",
        actor_label="tests",
    )  # about 1.00 left: less than an hour with GPUs, more than one without
    with pytest.raises(PortalError) as caught:
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
    assert caught.value.code == BillingErrorCode.INSUFFICIENT_CREDIT
    instance.refresh_from_db()
    assert instance.state == State.STOPPED
    instance = act(world, instance, "start", gpus=False)
    assert instance.state == State.RUNNING and not instance.gpus


def test_without_enough_for_a_no_gpu_hour_the_start_is_refused(memory_backend):
    world = World(credit_amount="4.00")
    MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU], currency="USD", price_per_unit=Decimal("50")
    )
    instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
    settle(instance)
    act(world, instance, "stop")
    with pytest.raises(PortalError) as caught:
        compute.instance_action(
            actor=world.actor(), instance_id=instance.pk, action="start", gpus=False
        )
    assert caught.value.code == BillingErrorCode.INSUFFICIENT_CREDIT
    assert "50" in caught.value.message or "50.00" in str(caught.value.details)
