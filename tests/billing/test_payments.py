"""Paying with the fake provider: top-ups through its checkout page, webhooks (signature,
duplicates, order), saved cards, auto-recharge and refunds."""

import json
import time
from decimal import Decimal

import pytest
from django.core import mail
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from billing.ledger.services import account_for
from billing.models import (
    AlertKind,
    LedgerEntry,
    Payment,
    PaymentMethod,
    PaymentStatus,
    SpendAlert,
    WebhookEvent,
)
from billing.payments import provider as payment_provider
from billing.payments import services as payments
from billing.payments.fake import FakeProvider
from billing.spend import services as spend
from portal.accounts.types import Actor
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("events_at_once")]


@pytest.fixture
def bare_org(db):
    return factories.organization(credit_amount=None)


@pytest.fixture
def owner_client(bare_org):
    client = Client()
    client.force_login(factories.member(bare_org, "owner"))
    return client


def _checkout(client, amount="100") -> str:
    response = client.post("/billing/top-up/", {"amount": amount})
    assert response.status_code == 302, response.content[:500]
    assert response.url.startswith("/billing/checkout/fake/")
    return response.url


def _ledger(org) -> list[tuple[str, Decimal]]:
    return sorted((e.kind, e.amount) for e in LedgerEntry.objects.filter(account__organization=org))


def test_a_top_up_is_credited_by_the_webhook_after_a_good_card(bare_org, owner_client):
    url = _checkout(owner_client, "100")
    page = owner_client.get(url)
    assert page.status_code == 200 and "100.00 USD" in page.content.decode()

    declined = owner_client.post(
        url, {"card_number": "4000 0000 0000 0002", "expiry": "12/40", "cvc": "123"}
    )
    assert declined.status_code == 422
    assert "Your card was declined." in declined.content.decode()
    assert _ledger(bare_org) == []

    paid = owner_client.post(
        url, {"card_number": "4242 4242 4242 4242", "expiry": "12/40", "cvc": "123"}
    )
    assert paid.status_code == 302 and paid.url.startswith("http://testserver/billing/payments/")
    payment = Payment.objects.get(organization=bare_org)
    assert payment.status == PaymentStatus.SUCCEEDED and payment.payment_intent_id
    assert _ledger(bare_org) == [("top_up", Decimal("100"))]
    event = WebhookEvent.objects.get(type="checkout.session.completed")
    assert event.processed_at is not None and "succeeded" in event.outcome
    assert account_for(bare_org).balance == Decimal("100")

    # Paying the same checkout again (back button) credits nothing more.
    owner_client.post(url, {"card_number": "4242424242424242", "expiry": "12/40", "cvc": "1"})
    assert _ledger(bare_org) == [("top_up", Decimal("100"))]
    history = owner_client.get("/billing/payments/?returned=1").content.decode()
    assert "Your payment is confirmed" in history


def test_returning_from_checkout_without_paying_credits_nothing(bare_org, owner_client):
    _checkout(owner_client, "100")
    history = owner_client.get("/billing/payments/?returned=1")
    assert "Waiting for the payment provider" in history.content.decode()
    assert 'hx-trigger="every 2s"' in history.content.decode()
    assert _ledger(bare_org) == []


def test_a_checkout_left_unpaid_is_canceled_once_its_page_expired(bare_org, owner_client):
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    url = _checkout(owner_client, "100")
    paid_url = _checkout(owner_client, "50")
    owner_client.post(
        paid_url, {"card_number": "4242 4242 4242 4242", "expiry": "12/40", "cvc": "123"}
    )
    abandoned = Payment.objects.get(organization=bare_org, amount=100)
    assert abandoned.status == PaymentStatus.PENDING and abandoned.checkout_id
    with time_machine.travel(timezone.now() + timedelta(minutes=59)):
        assert payments.checkouts_expire() == 0  # its page still works
    with time_machine.travel(timezone.now() + timedelta(minutes=61)):
        assert payments.checkouts_expire() == 1
        assert payments.checkouts_expire() == 0
        assert owner_client.get(url).status_code == 400  # the page says it expired
    abandoned.refresh_from_db()
    assert abandoned.status == PaymentStatus.CANCELED
    assert abandoned.failure_message == "The checkout page expired before paying."
    assert Payment.objects.get(amount=50).status == PaymentStatus.SUCCEEDED
    assert _ledger(bare_org) == [("top_up", Decimal("50"))]


@pytest.mark.parametrize(
    ("amount", "code_text"),
    [("1", "Top up between"), ("abc", "Enter an amount"), ("10.123", "decimal places"),
     ("-5", "positive"), ("999999", "Top up between")],
)  # fmt: skip
def test_bad_top_up_amounts_are_shown_on_the_form(bare_org, owner_client, amount, code_text):
    response = owner_client.post("/billing/top-up/", {"amount": amount})
    assert response.status_code == 422
    assert code_text in response.content.decode()
    assert not Payment.objects.exists()


@pytest.mark.parametrize("role", ["admin", "member", "viewer"])
def test_only_owners_and_billing_members_top_up(bare_org, role):
    client = Client()
    client.force_login(factories.member(bare_org, role))
    assert client.post("/billing/top-up/", {"amount": "50"}).status_code == 403
    assert not Payment.objects.exists()


def test_the_checkout_page_of_another_organisation_is_404(bare_org, owner_client):
    url = _checkout(owner_client)
    stranger = Client()
    stranger.force_login(factories.member(factories.organization(), "owner"))
    assert stranger.get(url).status_code == 404
    assert owner_client.get(url.rstrip("/") + "x/").status_code == 400  # tampered token


# --- the webhook endpoint --------------------------------------------------------------------


def _signed(event: dict, *, timestamp: int | None = None, secret_provider=None):
    provider = secret_provider or FakeProvider()
    body = json.dumps(event).encode()
    return body, provider.sign(body, timestamp)


def _pending_payment(org, amount="40") -> Payment:
    return Payment.objects.create(
        organization=org,
        purpose="top_up",
        amount=Decimal(amount),
        currency=org.currency,
        provider="fake",
        idempotency_key=f"top-up:test-{Payment.objects.count()}",
        checkout_id=f"fakecs_{Payment.objects.count()}",
        created_by="test",
    )


def _events_for(payment: Payment) -> list[dict]:
    provider = FakeProvider()
    meta = {"payment_id": str(payment.pk), "organization_id": str(payment.organization_id)}
    minor = int(payment.amount * 100)
    intent = f"fakepi_{payment.pk}"
    session = {
        "id": payment.checkout_id,
        "object": "checkout.session",
        "mode": "payment",
        "payment_intent": intent,
        "metadata": meta,
    }
    pi = {
        "id": intent,
        "object": "payment_intent",
        "amount": minor,
        "currency": "usd",
        "metadata": meta,
    }
    refund = {
        "id": f"fakech_{payment.pk}",
        "object": "charge",
        "payment_intent": intent,
        "metadata": meta,
        "refunds": {"data": [{"id": f"re_{payment.pk}", "amount": 1500, "status": "succeeded"}]},
    }
    return [
        provider.event("checkout.session.completed", {**session, "payment_status": "unpaid"}),
        provider.event("payment_intent.payment_failed",
                       {**pi, "last_payment_error": {"message": "Declined."}}),
        provider.event("checkout.session.async_payment_succeeded",
                       {**session, "payment_status": "paid"}),
        provider.event("payment_intent.succeeded", {**pi, "status": "succeeded"}),
        provider.event("charge.refunded", refund),
    ]  # fmt: skip


def test_a_bad_or_old_signature_is_refused_and_nothing_is_stored(bare_org):
    client = Client()
    payment = _pending_payment(bare_org)
    event = _events_for(payment)[3]
    body, headers = _signed(event)
    tampered = body.replace(b"succeeded", b"succeedex")
    response = client.post("/webhooks/fake/", tampered, content_type="application/json",
                           headers=headers)  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"
    old_body, old_headers = _signed(event, timestamp=int(time.time()) - 301)
    assert client.post("/webhooks/fake/", old_body, content_type="application/json",
                       headers=old_headers).status_code == 400  # fmt: skip
    assert client.post("/webhooks/fake/", body, content_type="application/json").status_code == 400
    assert client.post("/webhooks/nobody/", body, content_type="application/json",
                       headers=headers).status_code == 404  # fmt: skip
    assert not WebhookEvent.objects.exists() and _ledger(bare_org) == []


def test_a_duplicate_delivery_is_acknowledged_and_applied_once(bare_org):
    client = Client()
    payment = _pending_payment(bare_org)
    body, headers = _signed(_events_for(payment)[3])
    first = client.post("/webhooks/fake/", body, content_type="application/json", headers=headers)
    again = client.post("/webhooks/fake/", body, content_type="application/json", headers=headers)
    assert first.json()["duplicate"] is False and again.json()["duplicate"] is True
    assert WebhookEvent.objects.count() == 1
    assert _ledger(bare_org) == [("top_up", Decimal("40"))]


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(5)), repeats=st.lists(st.integers(0, 4), max_size=5))
def test_any_order_and_any_repeats_give_the_same_ledger(bare_org, order, repeats):
    """Replaying every event (some twice) in any order ends with the payment succeeded, credited
    once and its refund taken once."""
    client = Client()
    payment = _pending_payment(bare_org)
    events = _events_for(payment)
    for index in [*order, *repeats]:
        body, headers = _signed(events[index])
        assert client.post("/webhooks/fake/", body, content_type="application/json",
                           headers=headers).status_code == 200  # fmt: skip
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.refunded_amount == Decimal("15")
    entries = sorted((e.kind, e.amount) for e in LedgerEntry.objects.filter(payment=payment))
    assert entries == [("refund", Decimal("-15")), ("top_up", Decimal("40"))]


def test_events_wait_for_the_commit(bare_org, monkeypatch, django_capture_on_commit_callbacks):
    from billing.payments import events

    monkeypatch.undo()
    assert events.enqueue_on_commit.__module__ == "portal.background"
    payment = _pending_payment(bare_org)
    body, headers = _signed(_events_for(payment)[3])
    with django_capture_on_commit_callbacks() as callbacks:
        Client().post("/webhooks/fake/", body, content_type="application/json", headers=headers)
        assert WebhookEvent.objects.get().processed_at is None and _ledger(bare_org) == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert WebhookEvent.objects.get().processed_at is not None
    assert _ledger(bare_org) == [("top_up", Decimal("40"))]


def test_unprocessed_events_are_picked_up_by_the_retry(bare_org, settings):
    from billing.payments import events as webhook_events

    payment = _pending_payment(bare_org)
    body, _headers = _signed(_events_for(payment)[3])
    event = WebhookEvent.objects.create(
        provider="fake", event_id="evt_lost", type="payment_intent.succeeded",
        payload=json.loads(body),
    )  # fmt: skip
    WebhookEvent.objects.filter(pk=event.pk).update(
        received_at=event.received_at.replace(year=2020)
    )
    assert webhook_events.webhooks_retry() == 1
    assert webhook_events.webhooks_retry() == 0
    assert _ledger(bare_org) == [("top_up", Decimal("40"))]


# --- saved cards, auto-recharge, refunds -----------------------------------------------------


def _save_card(client, number="4242424242424242") -> None:
    response = client.post("/billing/cards/add/")
    assert response.status_code == 302
    done = client.post(response.url, {"card_number": number, "expiry": "11/39", "cvc": "123"})
    assert done.status_code == 302, done.content[:400]


def test_cards_are_saved_made_default_and_removed(bare_org, owner_client):
    _save_card(owner_client)
    _save_card(owner_client, "5555555555554444")
    first, second = PaymentMethod.objects.order_by("created_at")
    assert (first.brand, first.last4, first.exp_month, first.exp_year) == ("visa", "4242", 11, 2039)
    assert first.is_default and not second.is_default
    page = owner_client.get("/billing/").content.decode()
    assert "•••• 4242" in page and "•••• 4444" in page
    owner_client.post(f"/billing/cards/{second.pk}/default/")
    first.refresh_from_db(), second.refresh_from_db()
    assert second.is_default and not first.is_default
    owner_client.post(f"/billing/cards/{second.pk}/remove/")
    first.refresh_from_db()
    assert first.is_default
    stranger = Client()
    stranger.force_login(factories.member(factories.organization(), "owner"))
    assert stranger.post(f"/billing/cards/{first.pk}/remove/").status_code == 404
    first.refresh_from_db()
    assert first.removed_at is None  # another organisation's card is not found


def test_a_declined_card_is_not_saved(bare_org, owner_client):
    response = owner_client.post("/billing/cards/add/")
    page = owner_client.post(
        response.url, {"card_number": "4000000000000002", "expiry": "11/39", "cvc": "1"}
    )
    assert page.status_code == 422 and not PaymentMethod.objects.exists()


def test_auto_recharge_needs_a_card_and_charges_once_below_the_threshold(bare_org, owner_client):
    refused = owner_client.post(
        "/billing/auto-recharge/", {"enabled": "on", "threshold": "20", "amount": "100"}
    )
    assert refused.status_code == 422 and "Save a card first" in refused.content.decode()
    _save_card(owner_client)
    owner_client.post(
        "/billing/auto-recharge/", {"enabled": "on", "threshold": "20", "amount": "100"}
    )
    assert payments.profile_for(bare_org).auto_recharge_enabled

    spend.watch_organization(bare_org)
    spend.watch_organization(bare_org)  # the balance is back above 20: nothing more
    charges = Payment.objects.filter(organization=bare_org, purpose="auto_recharge")
    assert [(p.status, p.amount) for p in charges] == [("succeeded", Decimal("100.00"))]
    assert _ledger(bare_org) == [("top_up", Decimal("100"))]


def test_a_declining_saved_card_is_tried_once_per_period_and_the_owner_is_told(
    bare_org, owner_client, django_capture_on_commit_callbacks
):
    _save_card(owner_client, "4000000000000341")
    owner_client.post(
        "/billing/auto-recharge/", {"enabled": "on", "threshold": "20", "amount": "50"}
    )
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        spend.watch_organization(bare_org)
        spend.watch_organization(bare_org)
    charges = Payment.objects.filter(organization=bare_org, purpose="auto_recharge")
    assert [c.status for c in charges] == ["failed"]
    assert "declined" in charges[0].failure_message
    assert SpendAlert.objects.filter(kind=AlertKind.AUTO_RECHARGE_FAILED).count() == 1
    assert sorted(m.to[0] for m in mail.outbox if "Auto-recharge failed" in m.subject) == sorted(
        spend.billing_contacts(bare_org)
    )
    assert _ledger(bare_org) == []


def test_an_operator_refund_takes_the_credit_back_once(bare_org, owner_client, admin_user):
    url = _checkout(owner_client, "80")
    owner_client.post(url, {"card_number": "4242424242424242", "expiry": "12/40", "cvc": "1"})
    payment = Payment.objects.get()
    operator = Actor.for_operator(admin_user, bare_org)
    payments.refund_create(actor=operator, payment_id=payment.pk, amount="30", reason="Goodwill")
    payment.refresh_from_db()
    assert payment.refunded_amount == Decimal("30")
    assert _ledger(bare_org) == [("refund", Decimal("-30")), ("top_up", Decimal("80"))]
    from portal.errors import InvalidInput, PermissionDenied

    with pytest.raises(InvalidInput) as too_much:
        payments.refund_create(actor=operator, payment_id=payment.pk, amount="50.01", reason="x")
    assert too_much.value.code == "refund_too_large"
    customer = factories.actor(bare_org, factories.member(bare_org, "billing"))
    with pytest.raises(PermissionDenied):
        payments.refund_create(actor=customer, payment_id=payment.pk, amount="1", reason="x")


def test_the_default_provider_is_the_fake_one():
    assert payment_provider().name == "fake"
