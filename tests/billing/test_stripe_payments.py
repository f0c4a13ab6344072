"""Paying through Stripe end to end: signed webhooks into the portal's endpoint, the services
calling localstripe for cards, off-session charges and refunds. Checkout (which localstripe
lacks) arrives as Stripe's own example objects, signed."""

from decimal import Decimal

import pytest
from django.test import Client

from billing.models import LedgerEntry, Payment, PaymentMethod, PaymentStatus, WebhookEvent
from billing.payments import services as payments
from billing.spend import services as spend
from portal.accounts.types import Actor
from tests import factories
from tests.billing import stripe_payloads as payloads

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("events_at_once")]


@pytest.fixture
def org(db):
    return factories.organization(credit_amount=None)


def _deliver(event: dict) -> dict:
    body, headers = payloads.signed(event)
    response = Client().post(
        "/webhooks/stripe/",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"],
    )
    assert response.status_code == 200, response.content
    return response.json()


def _ledger(org) -> list[tuple[str, Decimal]]:
    return sorted((e.kind, e.amount) for e in LedgerEntry.objects.filter(account__organization=org))


def _top_up(org, amount="25.00") -> Payment:
    return Payment.objects.create(
        organization=org,
        purpose="top_up",
        amount=Decimal(amount),
        currency=org.currency,
        provider="stripe",
        idempotency_key=f"top-up:stripe-{Payment.objects.count()}",
        checkout_id=payloads.unique_id("cs_test"),
        created_by="test",
    )


def test_a_checkout_top_up_is_credited_once_from_its_webhooks(stripe_settings, org):
    payment = _top_up(org)
    completed = payloads.checkout_session_completed(
        payment.pk, org.pk, 2500, "usd", session_id=payment.checkout_id, payment_intent="pi_test_1"
    )
    assert _deliver(completed)["duplicate"] is False
    assert _deliver(completed)["duplicate"] is True
    intent = payloads.payment_intent_event(
        "payment_intent.succeeded",
        payment_id=payment.pk,
        organization_id=org.pk,
        amount_minor=2500,
        currency="usd",
        payment_intent_id="pi_test_1",
    )
    _deliver(intent)
    payment.refresh_from_db()
    assert (payment.status, payment.payment_intent_id) == ("succeeded", "pi_test_1")
    assert _ledger(org) == [("top_up", Decimal("25"))]
    assert WebhookEvent.objects.filter(provider="stripe", processed_at__isnull=False).count() == 2


def test_an_asynchronous_payment_waits_and_a_late_failure_changes_nothing(stripe_settings, org):
    payment = _top_up(org, "40.00")
    _deliver(
        payloads.checkout_session_completed(
            payment.pk, org.pk, 4000, "usd", payment_status="unpaid",
            session_id=payment.checkout_id, payment_intent="pi_async",
        )
    )  # fmt: skip
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and _ledger(org) == []
    _deliver(
        payloads.checkout_async_payment_succeeded(
            payment.pk, org.pk, 4000, "usd", session_id=payment.checkout_id,
            payment_intent="pi_async",
        )
    )  # fmt: skip
    _deliver(
        payloads.checkout_async_payment_failed(
            payment.pk, org.pk, 4000, "usd", session_id=payment.checkout_id,
            payment_intent="pi_async",
        )
    )  # fmt: skip
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert _ledger(org) == [("top_up", Decimal("40"))]


def test_an_event_naming_another_organisation_credits_nobody(stripe_settings, org):
    payment = _top_up(org)
    other = factories.organization(credit_amount=None)
    _deliver(
        payloads.checkout_session_completed(
            payment.pk, other.pk, 2500, "usd", session_id=payloads.unique_id("cs_test")
        )
    )
    assert _ledger(org) == [] and _ledger(other) == []


def _setup_card(stripe_settings, org, number: str) -> PaymentMethod:
    """The card a customer saves on Stripe's setup page, then Stripe's webhook about it."""
    from billing.payments import provider

    stripe_provider = provider("stripe")
    customer = stripe_provider.customer_ensure(org)
    api = stripe_provider.client
    card = api.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 9, "exp_year": 2031,
                                         "cvc": "123"}}
    )  # fmt: skip
    api.v1.payment_methods.attach(card.id, params={"customer": customer})
    _deliver(payloads.setup_intent_succeeded(org.pk, payment_method=card.id, customer=customer))
    return PaymentMethod.objects.get(provider_id=card.id)


def test_a_card_saved_at_stripe_is_recorded_from_the_webhook(stripe_settings, org):
    method = _setup_card(stripe_settings, org, "4242424242424242")
    assert (method.organization, method.brand, method.last4) == (org, "visa", "4242")
    assert (method.exp_month, method.exp_year, method.is_default) == (9, 2031, True)


def test_auto_recharge_charges_the_saved_card_off_session(stripe_settings, org):
    _setup_card(stripe_settings, org, "4242424242424242")
    owner = factories.actor(org, factories.member(org, "owner"))
    payments.auto_recharge_configure(actor=owner, enabled=True, threshold="10", amount="50")
    spend.watch_organization(org)
    payment = Payment.objects.get(purpose="auto_recharge")
    assert payment.status == PaymentStatus.SUCCEEDED and payment.payment_intent_id.startswith("pi_")
    assert _ledger(org) == [("top_up", Decimal("50"))]
    # Stripe's own event about the same intent arrives later: nothing more.
    _deliver(
        payloads.payment_intent_event(
            "payment_intent.succeeded", payment_id=payment.pk, organization_id=org.pk,
            amount_minor=5000, currency="usd", payment_intent_id=payment.payment_intent_id,
        )
    )  # fmt: skip
    assert _ledger(org) == [("top_up", Decimal("50"))]


def test_a_card_declining_off_session_leaves_a_failed_payment(stripe_settings, org):
    _setup_card(stripe_settings, org, "4000000000000341")
    owner = factories.actor(org, factories.member(org, "owner"))
    payments.auto_recharge_configure(actor=owner, enabled=True, threshold="10", amount="50")
    spend.watch_organization(org)
    payment = Payment.objects.get(purpose="auto_recharge")
    assert payment.status == PaymentStatus.FAILED and "declined" in payment.failure_message
    assert _ledger(org) == []


def test_a_refund_at_stripe_takes_the_credit_back_once(stripe_settings, org, admin_user):
    _setup_card(stripe_settings, org, "4242424242424242")
    payment = payments.charge_saved_card(
        organization=org, purpose="top_up", amount=Decimal("30.00"),
        idempotency_key="top-up:refund-test", created_by="test",
    )  # fmt: skip
    refund = payments.refund_create(
        actor=Actor.for_operator(admin_user, org), payment_id=payment.pk, amount="12.50",
        reason="Unused credit",
    )  # fmt: skip
    assert refund.status == "succeeded" and refund.provider_id.startswith("re_")
    # Stripe then sends charge.refunded with the same refund: recorded already.
    _deliver(
        payloads.charge_refunded(
            payment.payment_intent_id, 1250, "usd", [(refund.provider_id, 1250)]
        )
    )
    payment.refresh_from_db()
    assert payment.refunded_amount == Decimal("12.50")
    assert _ledger(org) == [("refund", Decimal("-12.5")), ("top_up", Decimal("30"))]


def test_an_expired_checkout_cancels_the_top_up_unless_it_was_paid(stripe_settings, org):
    abandoned, paid = _top_up(org), _top_up(org, "30.00")
    _deliver(
        payloads.checkout_session_completed(
            paid.pk, org.pk, 3000, "usd", session_id=paid.checkout_id, payment_intent="pi_paid"
        )
    )
    for payment in (abandoned, paid):
        _deliver(
            payloads.checkout_session_expired(
                payment.pk, org.pk, int(payment.amount * 100), "usd",
                session_id=payment.checkout_id,
            )
        )  # fmt: skip
    abandoned.refresh_from_db(), paid.refresh_from_db()
    assert abandoned.status == PaymentStatus.CANCELED and paid.status == PaymentStatus.SUCCEEDED
    assert _ledger(org) == [("top_up", Decimal("30"))]
