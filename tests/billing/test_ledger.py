"""The credits ledger: append-only, idempotent, balance equal to the sum, usage debited once."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.ledger import services
from billing.models import Account, EntryKind, LedgerEntry, UsageRating
from portal.accounts.types import Actor
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests import factories

pytestmark = pytest.mark.django_db


def post(org, amount, key, kind=EntryKind.ADJUSTMENT):
    return services.ledger_post(
        organization=org,
        kind=kind,
        amount=amount,
        idempotency_key=key,
        description="test",
        actor_label="test",
    )


def test_balance_is_the_sum_of_entries_and_keys_are_idempotent(org):
    post(org, "100.00", "a", EntryKind.TOP_UP)
    post(org, "-12.345678901234", "b")
    _entry, created = post(org, "-12.345678901234", "b")
    assert not created
    account = Account.objects.get(organization=org)
    assert account.balance == Decimal("87.654321098766")
    assert account.balance == sum(e.amount for e in LedgerEntry.objects.filter(account=account))
    with pytest.raises(Conflict) as caught:
        post(org, "-1", "b")
    assert caught.value.code == "idempotency_key_reused"


@pytest.mark.parametrize("amount", ["0", "abc", "NaN", "1.0000000000001"])
def test_bad_amounts_are_refused(org, amount):
    with pytest.raises(InvalidInput):
        post(org, amount, f"bad-{amount}")
    assert not LedgerEntry.objects.exists()


def test_grants_need_an_operator_and_a_reason_and_are_audited(org, owner):
    from portal.accounts.models import AuditEvent

    operator = factories.user(is_staff=True)
    with pytest.raises(PermissionDenied):
        services.credit_grant(
            actor=factories.actor(org, owner),
            organization=org,
            amount="5",
            reason="x",
            idempotency_key="g0",
        )
    actor = Actor.for_operator(operator, org)
    with pytest.raises(InvalidInput):
        services.credit_grant(
            actor=actor, organization=org, amount="5", reason=" ", idempotency_key="g1"
        )
    entry = services.credit_grant(
        actor=actor, organization=org, amount="25.50", reason="launch promo", idempotency_key="g2"
    )
    assert entry.kind == "grant" and entry.amount == Decimal("25.50")
    assert AuditEvent.objects.get(action="credit.grant").details["reason"] == "launch promo"


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_keep_the_cached_balance_exact(require_postgres):
    org = factories.organization(credit_amount=None)
    barrier = threading.Barrier(10)

    def worker(i):
        try:
            barrier.wait()
            for j in range(10):
                post(org, "-0.333333333333", f"c{i}-{j}")
                post(org, "-0.333333333333", f"c{i}-{j}")  # a retry
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    account = Account.objects.get(organization=org)
    assert LedgerEntry.objects.count() == 100
    assert (
        account.balance == Decimal("-33.3333333333") == sum(e.amount for e in account.entries.all())
    )


def test_usage_is_debited_once_at_the_price_in_force(memory_backend, monkeypatch):
    from portal.compute import services as compute
    from portal.metering.rating import Rater
    from portal.metering.services import usage_close_hour
    from tests.factories import World

    start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    with time_machine.travel(start - timedelta(days=1), tick=False):
        world = World()
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(start + timedelta(hours=2, minutes=10))
        usage_close_hour(hour_start=start)
        usage_close_hour(hour_start=start + timedelta(hours=1))
        loads, init = [], Rater.__init__
        monkeypatch.setattr(
            Rater, "__init__", lambda self, currency: loads.append(currency) or init(self, currency)
        )
        first = services.usage_debit_pending()
        again = services.usage_debit_pending()
    assert (first.debited, again.debited) == (2, 0)
    assert loads == ["USD"]  # the price history is read once per currency, not per record
    assert first.amount == Decimal("7.00")  # two full hours at 3.50
    assert UsageRating.objects.count() == 2
    account = Account.objects.get(organization=world.org)
    assert account.balance == Decimal("10000") - Decimal("7.00")  # the world's starting credit
    # the balance shown also counts the 10 minutes not closed yet
    with time_machine.travel(start + timedelta(hours=2, minutes=10), tick=False):
        shown = services.balance(world.org)
    assert shown == Decimal("10000") - Decimal("7.00") - Decimal("3.50") * 600 / 3600


def test_admin_grant_form(org):
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    account = services.account_for(org)
    page = staff.get(f"/admin/billing/account/{account.pk}/grant/")
    assert page.status_code == 200
    key = page.context["form"].initial["key"]
    for _ in range(2):  # a double submit grants once
        staff.post(
            f"/admin/billing/account/{account.pk}/grant/",
            {"amount": "10", "reason": "welcome", "key": key},
        )
    account.refresh_from_db()
    assert account.balance == Decimal("10")
    assert staff.get("/admin/billing/ledgerentry/").status_code == 200


@pytest.fixture
def org(db):
    """No starting credit: these tests count every entry."""
    return factories.organization(credit_amount=None)


MOVES = st.tuples(
    st.sampled_from(["top_up", "grant", "usage", "refund", "adjustment"]),
    st.decimals(min_value=Decimal("0.000000000001"), max_value=Decimal("5000"), places=12),
    st.integers(0, 15),  # the idempotency key: repeats are retries of the same movement
)


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(moves=st.lists(MOVES, max_size=25))
def test_the_balance_is_always_the_sum_of_the_entries(require_postgres, moves):
    """On PostgreSQL (exact numerics); SQLite keeps decimals as floating point, so the
    development database may differ in the 12th decimal place."""
    org = factories.organization(credit_amount=None)
    first: dict[int, tuple[str, Decimal]] = {}
    for kind, amount, key in moves:
        signed = -amount if kind in ("usage", "refund") else amount
        first.setdefault(key, (kind, signed))
        try:
            services.ledger_post(
                organization=org, kind=kind, amount=signed, idempotency_key=f"p{org.pk}:{key}",
                description="move", actor_label="test",
            )  # fmt: skip
        except Conflict:
            assert first[key] != (kind, signed)  # the same key for another movement
    account = services.account_for(org)
    entries = LedgerEntry.objects.filter(account=account)
    assert account.balance == sum((e.amount for e in entries), Decimal(0))
    assert account.balance == sum((amount for _, amount in first.values()), Decimal(0))
    assert entries.count() == len(first)


@pytest.mark.django_db(transaction=True)
def test_two_workers_debiting_the_same_records_debit_each_once(require_postgres, monkeypatch):
    """Both workers read the same unrated records before either writes: per organisation, one
    writes its batch and the other's batch fails as a whole and is retried record by record,
    finding each rated already. Nothing is rated or debited twice."""
    from portal.metering.lifecycle_usage import COMPUTE
    from tests.factories.billing import OCT_START, make_org, make_world, record
    from tests.factories.billing import H as HOUR

    world = make_world()
    orgs = [world.org, make_org(credit_amount=None), make_org(credit_amount=None)]
    h200 = world.types["gpu_1x_h200"]
    for n, org in enumerate(orgs):
        for i in range(4 + n):
            record(org, COMPUTE, OCT_START + i * HOUR, 3600, instance_type=h200,
                   region=world.region, subject=str(n))  # fmt: skip
    before = {org.pk: services.account_for(org).balance for org in orgs}
    both_read = threading.Barrier(2, timeout=30)
    together = services._usage_debit_together

    def after_both_read(priced):
        if priced[0][0].organization_id == orgs[0].pk:
            both_read.wait()  # each worker holds its list of pending records by now
        return together(priced)

    monkeypatch.setattr(services, "_usage_debit_together", after_both_read)
    reports = []

    def worker():
        try:
            reports.append(services.usage_debit_pending())
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 2
    assert sum(r.debited for r in reports) == 4 + 5 + 6  # every record once, across both
    assert sum((r.amount for r in reports), Decimal(0)) == Decimal("3.50") * 15
    assert UsageRating.objects.count() == 15
    assert LedgerEntry.objects.filter(kind=EntryKind.USAGE).count() == 15
    for n, org in enumerate(orgs):
        account = services.account_for(org)
        assert account.balance == before[org.pk] - Decimal("3.50") * (4 + n)
        assert account.balance == sum((e.amount for e in account.entries.all()), Decimal(0))
