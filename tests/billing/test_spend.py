"""Spend controls: the launch and start checks, notices as credit runs low, instances stopped
(never terminated) before the credit runs out, monthly limits and overdue invoices."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test import Client

from billing.ledger import services
from billing.models import AlertKind, Invoice, LedgerEntry, Payment, SpendAlert
from billing.payments import services as payments
from billing.spend import services as spend
from portal.compute import services as compute
from portal.compute.models import Instance
from portal.errors import Conflict
from tests import factories
from tests.concurrency import at_once
from tests.factories import World

pytestmark = pytest.mark.django_db
START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def _world(credit: str | None, **org_fields) -> World:
    with time_machine.travel(START - timedelta(days=1), tick=False):
        return World(credit_amount=credit, **org_fields)


def _launch(world: World, name: str = "box") -> Instance:
    instance, _ = compute.instance_launch(actor=world.actor(), request=world.request(name=name))
    compute.instance_sync(instance_id=instance.pk)
    return Instance.objects.get(pk=instance.pk)


def test_a_prepaid_launch_needs_one_hour_of_credit(memory_backend):
    world = _world(credit="3.49")  # gpu_1x_h200 costs 3.50 an hour
    with time_machine.travel(START, tick=False):
        with pytest.raises(spend.PaymentRequired) as refused:
            _launch(world)
        assert refused.value.code == "insufficient_credit" and refused.value.status == 402
        assert refused.value.details == {
            "balance": "3.49",
            "reserved": "0.00",
            "available": "3.49",
            "needed": "3.50",
            "top_up_at_least": "0.01",
            "reserve_hours": "1",
            "currency": "USD",
            "top_up_url": "/billing/",
        }
        assert "Top up at least 0.01 USD" in refused.value.message
        assert not Instance.objects.exists()
        factories.credit(world.org, "0.01")
        assert _launch(world).state == "running"


def test_credit_is_reserved_for_everything_already_running_or_stored(memory_backend, settings):
    """Two hours of one H200 pay for two launches, not for one launch after another forever."""
    world = _world(credit="7.00")
    with time_machine.travel(START, tick=False):
        assert _launch(world, "one").state == "running"
        assert _launch(world, "two").state == "running"  # 7.00 - 3.50 reserved = 3.50 free
        with pytest.raises(spend.PaymentRequired) as third:
            _launch(world, "three")
        assert third.value.code == "insufficient_credit"
        assert third.value.details["reserved"] == "7.00"
        assert third.value.details["top_up_at_least"] == "3.50"
        # a stopped instance keeps its 100 GB disk: 0.10 USD a GB-month, reserved per hour
        one = Instance.objects.get(name="one")
        compute.instance_action(actor=world.actor(), instance_id=one.pk, action="stop")
        compute.instance_sync(instance_id=one.pk)
        reserve = spend.credit_reserve(world.org)
        disk_per_hour = Decimal(100) * Decimal("0.10") / 730
        assert reserve.burn_per_hour == Decimal("3.50") + disk_per_hour
        # starting it again needs its hour of compute beyond what is reserved
        with pytest.raises(spend.PaymentRequired) as start:
            compute.instance_action(actor=world.actor(), instance_id=one.pk, action="start")
        assert start.value.code == "insufficient_credit"
        assert "starting one" in start.value.message
        # a new volume needs its storage for the window: 65,536 GB is 8.98 an hour, 1 GB 0.000137
        with pytest.raises(spend.PaymentRequired) as volume:
            compute.volume_create(
                actor=world.actor(), name="big", region="us-east-1", size_gb=65536
            )
        assert volume.value.code == "insufficient_credit"
        compute.volume_create(actor=world.actor(), name="data", region="us-east-1", size_gb=1)
        factories.credit(world.org, "3.50")
        compute.instance_action(actor=world.actor(), instance_id=one.pk, action="start")
        # a longer reserve window asks for more
        settings.BILLING_CREDIT_RESERVE_HOURS = Decimal("2")
        with pytest.raises(spend.PaymentRequired):
            _launch(world, "four")


def test_an_invoiced_organisation_has_no_credit_reserve(memory_backend):
    world = _world(credit=None, billing_mode="invoiced")
    with time_machine.travel(START, tick=False):
        compute.volume_create(actor=world.actor(), name="data", region="us-east-1", size_gb=500)


@pytest.mark.django_db(transaction=True)
def test_20_concurrent_launches_with_credit_for_3_give_exactly_3(
    require_postgres, memory_backend, settings
):
    settings.DEFAULT_GPU_QUOTA = 100
    world = _world(credit="10.50")  # 3 hours of one H200; 8 GPUs free
    actor = world.actor()
    with time_machine.travel(START, tick=False):
        outcomes = at_once(
            20,
            lambda i: compute.instance_launch(actor=actor, request=world.request(name=f"race-{i}")),
        )
    assert outcomes.count("ok") == 3, outcomes
    assert outcomes.count("insufficient_credit") == 17
    assert Instance.objects.filter(organization=world.org).count() == 3


def test_the_api_answers_402_with_the_code_and_the_page_shows_it(memory_backend):
    world = _world(credit=None)
    client = factories.api_client_for(world.org, "owner")
    with time_machine.travel(START, tick=False):
        response = client.post(
            "/api/v1/instances",
            {
                "name": "box",
                "instance_type": "gpu_1x_h200",
                "region": world.region.code,
                "ssh_key_ids": [world.ssh_key.pk],
            },
            format="json",
        )
        assert response.status_code == 402, response.content
        assert response.json()["error"]["code"] == "insufficient_credit"
        page = Client()
        page.force_login(world.owner)
        form = page.post(
            "/instances/launch/",
            {"name": "box", "instance_type": "gpu_1x_h200", "region": world.region.code,
             "image": world.image.name, "ssh_key_ids": [world.ssh_key.pk], "volume_id": "",
             "new_volume_gb": "", "user_data": ""},
        )  # fmt: skip
        assert form.status_code == 422
        body = form.content.decode()
        assert "Not enough credit for gpu_1x_h200" in body, form.context["form"].errors
        assert 'href="/billing/"' in body  # the top-up is one click away


def test_an_invoiced_organisation_launches_without_credit(memory_backend):
    world = _world(credit=None, billing_mode="invoiced")
    with time_machine.travel(START, tick=False):
        assert _launch(world).state == "running"


def test_an_overdue_invoice_blocks_launches_and_starts(memory_backend):
    world = _world(credit="100", billing_mode="invoiced")
    with time_machine.travel(START, tick=False):
        instance = _launch(world)
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        compute.instance_sync(instance_id=instance.pk)
        Invoice.objects.create(
            organization=world.org, period_start="2026-04-01", period_end="2026-05-01",
            currency="USD", billing_mode="invoiced", status="finalized", number="INV-2026-000001",
            tax_status="standard", subtotal=10, total=10, amount_due=10,
            issued_at=START - timedelta(days=40), due_at=START - timedelta(days=10),
        )  # fmt: skip
        with pytest.raises(spend.PaymentRequired) as launch:
            _launch(world, "second")
        with pytest.raises(spend.PaymentRequired) as start:
            compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
    assert launch.value.code == start.value.code == "invoice_overdue"
    assert spend.spend_state(world.org).overdue


def test_the_spend_limit_blocks_launches_and_tells_owners_and_billing_once(
    memory_backend, django_capture_on_commit_callbacks
):
    world = _world(credit="1000")
    billing_member = factories.member(world.org, "billing")
    factories.member(world.org, "member")  # not told
    with time_machine.travel(START, tick=False) as clock:
        _launch(world)
        spend.spend_limit_set(actor=world.actor(), limit="5")
        clock.move_to(START + timedelta(hours=1, minutes=30))  # 5.25 spent
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            spend.spend_watch()
            spend.spend_watch()
        with pytest.raises(spend.PaymentRequired) as refused:
            _launch(world, "second")
    assert refused.value.code == "spend_limit_reached"
    assert refused.value.details == {"limit": "5.00", "month_to_date": "5.25", "mode": "block"}
    told = sorted(m.to[0] for m in mail.outbox)
    assert told == sorted([world.org.billing_email, world.owner.email, billing_member.email])
    assert "Monthly spend limit reached" in mail.outbox[0].subject
    with time_machine.travel(START + timedelta(hours=1, minutes=31), tick=False):
        client = Client()
        client.force_login(world.owner)
        page = client.get("/instances/").content.decode()
        assert "spend limit is reached" in page
        spend.spend_limit_set(actor=world.actor(), limit="")  # cleared: launches again
        assert _launch(world, "third").state == "running"
        assert "spend limit is reached" not in client.get("/instances/").content.decode()


def test_low_balance_notices_at_a_day_and_an_hour_left_once_each(
    memory_backend, django_capture_on_commit_callbacks
):
    world = _world(credit="90")  # 3.50/h: about 25.7 hours
    with time_machine.travel(START, tick=False) as clock:
        instance = _launch(world)
        with django_capture_on_commit_callbacks(execute=True):
            assert spend.watch_organization(world.org) == []
            clock.move_to(START + timedelta(hours=2))  # 83 left: 23.7 h
            assert spend.watch_organization(world.org) == [AlertKind.LOW_BALANCE_24H]
            assert spend.watch_organization(world.org) == []
        assert "Less than a day of credit left" in spend.banner(world.org).message
        # with nothing running there is no countdown to show
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        compute.instance_sync(instance_id=instance.pk)
        assert spend.banner(world.org) is None
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
        compute.instance_sync(instance_id=instance.pk)
        with django_capture_on_commit_callbacks(execute=True):
            clock.move_to(START + timedelta(hours=25, minutes=10))  # 1.92 left: 0.55 h
            assert spend.watch_organization(world.org) == [AlertKind.LOW_BALANCE_1H]
    subjects = [m.subject for m in mail.outbox if m.to == [world.owner.email]]
    assert subjects == [
        f"Less than 24 hours of credit left — {world.org.name}",
        f"Less than 1 hour of credit left — {world.org.name}",
    ]
    assert "about 0.5 hours" in mail.outbox[-1].body


def test_instances_stop_before_the_credit_runs_out_and_start_after_a_top_up(
    memory_backend, django_capture_on_commit_callbacks
):
    world = _world(credit="7")  # two hours at 3.50
    with time_machine.travel(START, tick=False) as clock:
        instance = _launch(world)
        volume_count = world.org.volumes.count()
        # 1 h 54 min in: 0.35 left, more than 5 minutes (0.29) of burn
        clock.move_to(START + timedelta(hours=1, minutes=54))
        with django_capture_on_commit_callbacks(execute=True):
            spend.watch_organization(world.org)
        assert Instance.objects.get(pk=instance.pk).state == "running"
        # a minute later 0.29 is left: less than 5 minutes and a bit of burn
        clock.move_to(START + timedelta(hours=1, minutes=55, seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            assert spend.watch_organization(world.org) == ["1 instance(s) stopped"]
        compute.instance_sync(instance_id=instance.pk)
        stopped = Instance.objects.get(pk=instance.pk)
        assert stopped.state == "stopped" and stopped.desired_state == "stopped"
        assert world.org.volumes.count() == volume_count
        assert spend.credit_reserve(world.org).balance > 0  # stopped before it ran out
        assert AlertKind.INSTANCES_STOPPED in set(SpendAlert.objects.values_list("kind", flat=True))
        assert any("were stopped" in m.body for m in mail.outbox)
        page = Client()
        page.force_login(world.owner)
        assert "Instances were stopped" in page.get("/").content.decode()

        with pytest.raises(spend.PaymentRequired):
            compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
        payment = Payment.objects.create(
            organization=world.org, purpose="top_up", amount=Decimal("50"), currency="USD",
            provider="fake", idempotency_key="top-up:stopped", created_by="test",
        )  # fmt: skip
        payments.payment_succeeded(payment.pk)
        assert "Instances were stopped" not in page.get("/").content.decode()
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
        compute.instance_sync(instance_id=instance.pk)
        assert Instance.objects.get(pk=instance.pk).state == "running"


def test_the_largest_debt_under_the_defaults_is_the_storage_kept_after_the_stop(
    memory_backend, django_capture_on_commit_callbacks
):
    """The README's bound: with the watch every minute and a 5-minute threshold, compute is
    stopped before the balance reaches zero, so the only debt is the kept disks and volumes
    billed after the stop (here two 100 GB boot disks and a 50 GB volume at 0.10 USD a
    GB-month)."""
    world = _world(credit="10")
    with time_machine.travel(START, tick=False) as clock:
        one = _launch(world, "one")
        compute.volume_create(actor=world.actor(), name="data", region="us-east-1", size_gb=50)
        two = _launch(world, "two")  # 7.00 an hour and 50 GB: 10 USD last about 85 minutes
        storage_per_minute = Decimal(250) * Decimal("0.10") / 730 / 60
        stopped_minute = balance_at_stop = None
        last = 150
        for minute in range(1, last + 1):
            clock.move_to(START + timedelta(minutes=minute))
            with django_capture_on_commit_callbacks(execute=True):
                done = spend.watch_organization(world.org)
            for instance in (one, two):
                compute.instance_sync(instance_id=instance.pk)
            balance = spend.credit_reserve(world.org).balance
            if stopped_minute is None and done and "stopped" in done[-1]:
                stopped_minute, balance_at_stop = minute, balance
            since_stop = minute - stopped_minute if stopped_minute is not None else 0
            assert balance >= -storage_per_minute * since_stop, (minute, balance)
    assert stopped_minute is not None and balance_at_stop > 0
    # after the stop only the kept storage was billed
    kept = storage_per_minute * (last - stopped_minute)
    assert abs((balance_at_stop - balance) - kept) < Decimal("0.000001")


def test_the_billing_page_and_api_show_burn_and_time_left(memory_backend):
    world = _world(credit="35")
    with time_machine.travel(START, tick=False):
        _launch(world)
        client = factories.api_client_for(world.org, "billing")
        body = client.get("/api/v1/balance").json()
        assert body["currency"] == "USD" and Decimal(body["balance"]) == Decimal("35")
        assert Decimal(body["burn_per_hour"]) == Decimal("3.5")
        assert Decimal(body["hours_left"]) == Decimal("10.00")
        assert body["limit_reached"] is False and body["invoice_overdue"] is False
        ledger = client.get("/api/v1/ledger").json()
        assert [(e["kind"], e["amount"]) for e in ledger["results"]] == [
            ("grant", "35.000000000000")
        ]
        assert (
            factories.api_client_for(world.org, "member").get("/api/v1/balance").status_code == 403
        )
        page = Client()
        page.force_login(world.owner)
        html = page.get("/billing/").content.decode()
        assert "3.50 USD/h" in html and "About 10.0 hours of credit left" in html


@pytest.mark.django_db(transaction=True)
def test_concurrent_debits_and_top_ups_lose_no_update(require_postgres):
    """Ten threads debit usage while ten others credit top-ups, on one organisation."""
    org = factories.organization(credit_amount=None)
    barrier = threading.Barrier(20)
    errors = []

    def post(i: int) -> None:
        try:
            barrier.wait()
            if i % 2:
                services.ledger_post(
                    organization=org, kind="usage", amount=Decimal("-1.234567890123"),
                    idempotency_key=f"usage-test:{i}", description="usage", actor_label="t",
                )  # fmt: skip
            else:
                payment = Payment.objects.create(
                    organization=org, purpose="top_up", amount=Decimal("10.01"), currency="USD",
                    provider="fake", idempotency_key=f"top-up:c{i}", created_by="t",
                )  # fmt: skip
                payments.payment_succeeded(payment.pk)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    account = services.account_for(org)
    expected = Decimal("10.01") * 10 - Decimal("1.234567890123") * 10
    assert account.balance == expected
    assert sum(e.amount for e in LedgerEntry.objects.filter(account=account)) == expected


def test_conflict_errors_stay_conflicts():
    assert issubclass(spend.PaymentRequired, Conflict)


def _over_the_month(world, clock, hours, *, watch=True):
    clock.move_to(START + timedelta(hours=hours))
    return spend.watch_organization(world.org) if watch else None


def test_spend_limit_notices_at_50_80_and_100_percent_once_a_month(
    memory_backend, django_capture_on_commit_callbacks
):
    world = _world(credit="100000", name="O'Brien & Lee Labs")
    with time_machine.travel(START, tick=False) as clock:
        _launch(world)  # 3.50 an hour
        spend.spend_limit_set(actor=world.actor(), limit="10", mode="alert")
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert _over_the_month(world, clock, 1) == []  # 3.50: 35 %
            assert _over_the_month(world, clock, 1.5) == ["spend limit 50 %"]  # 5.25
            assert _over_the_month(world, clock, 2) == []  # 7.00: 70 %, told already
            assert "half of its limit" in spend.banner(world.org).message
            assert _over_the_month(world, clock, 2.5) == ["spend limit 80 %"]  # 8.75
            assert _over_the_month(world, clock, 3) == ["spend limit 100 %"]  # 10.50
            assert _over_the_month(world, clock, 4) == []
        # alert only: nothing is blocked or stopped
        assert "only alerts" in spend.banner(world.org).message
        assert _launch(world, "second").state == "running"
        assert Instance.objects.get(name="box").state == "running"
    subjects = [m.subject for m in mail.outbox if m.to == [world.owner.email]]
    assert subjects == [
        f"50 % of the monthly spend limit — {world.org.name}",
        f"80 % of the monthly spend limit — {world.org.name}",
        f"Monthly spend limit reached — {world.org.name}",
    ]
    body = mail.outbox[-1].body
    assert "Nothing is blocked" in body
    # a plain-text email: nothing HTML-escaped, and the billing page linked in full
    assert "This month's spend reached its limit" in body and "&#x27;" not in body
    assert "Organisation: O'Brien & Lee Labs" in body
    assert "Billing: http://" in body and body.split("Billing: ")[1].split()[0].endswith(
        "/billing/"
    )
    # a new month: the limit counts from zero and each notice can go out again
    with (
        time_machine.travel(datetime(2026, 7, 1, 1, tzinfo=UTC), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert spend.watch_organization(world.org) == ["spend limit 50 %"]  # 2 x 3.50 x 1 h


def test_block_mode_refuses_launches_and_starts_once_the_limit_is_reached(memory_backend):
    world = _world(credit="1000")
    with time_machine.travel(START, tick=False) as clock:
        instance = _launch(world)
        spend.spend_limit_set(actor=world.actor(), limit="5", mode="block")
        clock.move_to(START + timedelta(hours=2))  # 7.00 spent
        compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        compute.instance_sync(instance_id=instance.pk)
        assert spend.spend_state(world.org).limit_blocks
        for attempt in (
            lambda: _launch(world, "second"),
            lambda: compute.instance_action(
                actor=world.actor(), instance_id=instance.pk, action="start"
            ),
        ):
            with pytest.raises(spend.PaymentRequired) as refused:
                attempt()
            assert refused.value.code == "spend_limit_reached"
            assert refused.value.details["mode"] == "block"


def test_stop_mode_stops_running_instances_before_the_limit_and_keeps_their_disks(
    memory_backend, django_capture_on_commit_callbacks, settings
):
    world = _world(credit="1000")
    with time_machine.travel(START, tick=False) as clock:
        a, b = _launch(world, "a"), _launch(world, "b")  # 7.00 an hour together
        volume = compute.volume_create(
            actor=world.actor(), name="data", region="us-east-1", size_gb=50
        )
        spend.spend_limit_set(actor=world.actor(), limit="14", mode="stop")
        with django_capture_on_commit_callbacks(execute=True):
            # 13.30 spent at 1 h 54 min: 14.00 would be reached in 6 minutes, past the threshold
            assert "instance(s) stopped" not in " ".join(_over_the_month(world, clock, 1.9))
            # at 1 h 56 min 13.53 is spent: 14.00 within 5 minutes, so both stop now
            done = _over_the_month(world, clock, 1 + 56 / 60)
        assert "2 instance(s) stopped for the spend limit" in done
        for instance in (a, b):
            compute.instance_sync(instance_id=instance.pk)
            stopped = Instance.objects.get(pk=instance.pk)
            assert stopped.state == "stopped" and stopped.disk_gb == 100  # kept, not terminated
        volume.refresh_from_db()
        assert volume.state != "deleted"
        assert spend.spend_state(world.org).month_to_date < Decimal(14)
        assert "running instances were stopped" in spend.banner(world.org).message
        # one may start again (alone, 3.50/h reaches 14.00 in 8 minutes, past the threshold);
        # starting the second too would be stopped by the next watch, so it is refused
        compute.instance_action(actor=world.actor(), instance_id=a.pk, action="start")
        with pytest.raises(spend.PaymentRequired) as refused:
            compute.instance_action(actor=world.actor(), instance_id=b.pk, action="start")
        assert refused.value.code == "spend_limit_reached"
    stop_notice = [m for m in mail.outbox if "stopped" in m.body]
    assert stop_notice and "Their disks and volumes are kept" in stop_notice[0].body


def test_the_spend_limit_api_sets_the_limit_and_its_mode(memory_backend):
    world = _world(credit="100")
    api = factories.api_client_for(world.org, "billing")
    assert api.get("/api/v1/spend-limit").json() == {"monthly_spend_limit": None, "mode": "block"}
    response = api.put(
        "/api/v1/spend-limit", {"monthly_spend_limit": "250.50", "mode": "stop"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"monthly_spend_limit": "250.50", "mode": "stop"}
    for body, code in [
        ({"monthly_spend_limit": "250.505", "mode": "stop"}, "amount_invalid"),
        ({"monthly_spend_limit": "1e30"}, "amount_invalid"),
        ({"monthly_spend_limit": "10", "mode": "pause"}, "invalid"),
    ]:
        refused = api.put("/api/v1/spend-limit", body, format="json")
        assert refused.status_code == 400, refused.content
        assert refused.json()["error"]["code"] == code
    assert api.get("/api/v1/spend-limit").json()["monthly_spend_limit"] == "250.50"
    cleared = api.put("/api/v1/spend-limit", {"monthly_spend_limit": None}, format="json")
    assert cleared.json() == {"monthly_spend_limit": None, "mode": "stop"}
    # the billing page offers the same choice
    client = Client()
    client.force_login(world.owner)
    assert client.post("/billing/spend-limit/", {"limit": "80", "mode": "alert"}).status_code == 302
    assert api.get("/api/v1/spend-limit").json() == {
        "monthly_spend_limit": "80.00",
        "mode": "alert",
    }
    page = client.get("/billing/").content.decode()
    assert "Limit 80.00 USD, alert only" in page


def test_a_volume_made_with_the_launch_needs_its_storage_credit_too(memory_backend):
    """3.50 an hour for the H200 and 65,536 GB at 0.10 a GB-month (8.98 an hour) for the
    volume it is launched with: 3.50 of credit launches the instance alone, not both."""
    world = _world(credit="3.50")
    with time_machine.travel(START, tick=False):
        with pytest.raises(spend.PaymentRequired) as refused:
            compute.instance_launch(
                actor=world.actor(), request=world.request(name="big", new_volume_gb=65536)
            )
        assert refused.value.code == "insufficient_credit"
        assert "with a 65536 GB volume" in refused.value.message
        assert refused.value.details["needed"] == "12.48"
        assert not Instance.objects.exists()
        assert _launch(world, "alone").state == "running"
