from decimal import Decimal

import pytest
from django.test import Client

from billing import services
from billing.models import EntryKind
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
