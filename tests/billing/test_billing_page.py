import re
from decimal import Decimal

import pytest
from django.test import Client

from billing.ledger import services
from billing.models import EntryKind, LedgerEntry
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("billing", 200), ("member", 403), ("viewer", 403)],
)
def test_billing_page_follows_the_role_matrix(org, role, status):
    client = Client()
    client.force_login(factories.member(org, role))
    assert client.get("/billing/").status_code == status


def test_billing_page_shows_balance_and_only_this_organizations_ledger():
    org = factories.organization(credit_amount=None)
    owner = factories.member(org, "owner")
    other = factories.organization()
    services.ledger_post(
        organization=org,
        kind=EntryKind.TOP_UP,
        amount="50",
        idempotency_key="t1",
        description="Top-up by card",
        actor_label="test",
    )
    services.ledger_post(
        organization=other,
        kind=EntryKind.TOP_UP,
        amount="70",
        idempotency_key="t2",
        description="Someone else's top-up",
        actor_label="test",
    )
    client = Client()
    client.force_login(owner)
    html = client.get("/billing/").content.decode()
    assert "Top-up by card" in html and "Someone else" not in html
    assert "50.00 USD" in html
    assert services.balance(org) == Decimal("50")


def test_the_ledger_sums_usage_per_day_and_instance(memory_backend):
    from datetime import UTC, datetime, timedelta

    import time_machine

    from portal.compute import services as compute
    from portal.metering.services import usage_close_hour
    from tests.factories import World

    start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    with time_machine.travel(start - timedelta(days=1), tick=False):
        world = World()
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request("trainer"))
        compute.instance_sync(instance_id=instance.pk)
        clock.move_to(start + timedelta(hours=3, minutes=10))
        for hour in range(3):
            usage_close_hour(hour_start=start + timedelta(hours=hour))
        services.usage_debit_pending()
    debits = LedgerEntry.objects.filter(account__organization=world.org, kind="usage")
    compute_debits = debits.filter(usage_record__meter__key="instance.seconds")
    assert compute_debits.count() == 3  # one per hour
    client = Client()
    client.force_login(world.owner)
    html = client.get("/billing/").content.decode()
    rows = re.findall(
        r"<tr><td[^>]*>2026-06-01</td><td>([^<]*)<span[^>]*>([^<]*)</span></td>"
        r"<td[^>]*>Usage</td><td[^>]*>([^<]*)</td></tr>",
        html,
    )
    ours = [row for row in rows if f"instance {instance.pk} (trainer)" in row[0]]
    # one row for the day's GPU time, however many hours were debited (a running instance's
    # boot disk is part of its price)
    assert len(ours) == 1, rows
    text, hours, amount = ours[0]
    assert text.startswith("Instance running time · ") and hours == "3 hourly debits"
    assert amount == "-10.5000"  # three hours at 3.50, summed
    assert sum(e.amount for e in compute_debits) == Decimal("-10.5")
