"""The Stripe provider against localstripe (real HTTP calls to a Stripe-compatible server).

What localstripe lacks (Checkout Sessions, idempotency keys, Stripe's exact card-error bodies)
is tested against a recording server answering with Stripe's own example objects.
"""

import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
import stripe
import time_machine

from billing.models import BillingProfile, Payment, PaymentMethod, PaymentStatus, Refund
from billing.payments import provider as payment_provider
from billing.payments.base import PaymentProviderError, WebhookSignatureInvalid
from billing.payments.stripe_provider import StripeProvider
from tests import factories
from tests.billing import stripe_payloads as payloads
from tests.billing.stripe_server import Recorded, RecordingServer

VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"  # attaches fine, every charge is declined
NEEDS_3DS = "4000002500003155"


@pytest.fixture
def stripe_provider(stripe_settings) -> StripeProvider:
    provider = payment_provider()
    assert isinstance(provider, StripeProvider)
    return provider


@pytest.fixture
def api(stripe_provider: StripeProvider) -> stripe.StripeClient:
    """A client to arrange and inspect localstripe's state (the provider's own client)."""
    return stripe_provider.client


def _payment(org, amount: str = "25.00", currency: str = "USD", **fields) -> Payment:
    return Payment.objects.create(
        organization=org,
        purpose=fields.pop("purpose", "top_up"),
        amount=Decimal(amount),
        currency=currency,
        provider="stripe",
        idempotency_key=f"test:{uuid.uuid4()}",
        created_by="test",
        **fields,
    )


def _create_card(api: stripe.StripeClient, number: str, exp_month: int = 12, exp_year: int = 2030):
    return api.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": exp_month, "exp_year": exp_year, "cvc": "123"},
        }
    )


def _save_card(provider: StripeProvider, api: stripe.StripeClient, org, number: str):
    """What the hosted setup page does: a SetupIntent for the org's customer, confirmed with the
    card. Stripe attaches the card to the customer on confirmation; localstripe does not, so it
    is attached explicitly."""
    customer = provider.customer_ensure(org)
    card = _create_card(api, number)
    intent = api.v1.setup_intents.create(params={"customer": customer, "usage": "off_session"})
    api.v1.setup_intents.confirm(intent.id, params={"payment_method": card.id})
    api.v1.payment_methods.attach(card.id, params={"customer": customer})
    details = provider.card_details(card.id)
    return PaymentMethod.objects.create(
        organization=org,
        provider="stripe",
        provider_id=details.provider_id,
        brand=details.brand,
        last4=details.last4,
        exp_month=details.exp_month,
        exp_year=details.exp_year,
        is_default=True,
    )


def _paid(provider: StripeProvider, api: stripe.StripeClient, org, amount: str) -> Payment:
    """A succeeded off-session payment, as the services record it."""
    method = _save_card(provider, api, org, VISA)
    payment = _payment(org, amount, payment_method=method)
    result = provider.charge_off_session(payment, method)
    assert result.status == PaymentStatus.SUCCEEDED
    payment.payment_intent_id = result.payment_intent_id
    payment.status = PaymentStatus.SUCCEEDED
    payment.save(update_fields=["payment_intent_id", "status"])
    return payment


def _refund(payment: Payment, amount: str) -> Refund:
    return Refund.objects.create(
        payment=payment,
        amount=Decimal(amount),
        reason="test",
        idempotency_key=f"refund:{uuid.uuid4()}",
        created_by="test",
    )


# --- Customers -------------------------------------------------------------------------------


def test_one_customer_per_organisation_kept_on_its_billing_profile(stripe_provider, api, org):
    first = stripe_provider.customer_ensure(org)
    again = stripe_provider.customer_ensure(org)
    other = stripe_provider.customer_ensure(factories.organization())

    assert first.startswith("cus_")
    assert again == first
    assert other != first
    profile = BillingProfile.objects.get(organization=org)
    assert (profile.provider, profile.customer_id) == ("stripe", first)
    customer = api.v1.customers.retrieve(first)
    assert customer.metadata.organization_id == str(org.pk)
    assert customer.email == org.billing_email
    assert len(api.v1.customers.list().data) == 2


def test_a_customer_of_another_provider_is_replaced(stripe_provider, org):
    BillingProfile.objects.create(organization=org, provider="fake", customer_id="fake_cus_1")

    customer = stripe_provider.customer_ensure(org)

    assert customer.startswith("cus_")
    profile = BillingProfile.objects.get(organization=org)
    assert (profile.provider, profile.customer_id) == ("stripe", customer)


def test_stripe_refusing_the_key_is_a_provider_error(stripe_settings, org):
    stripe_settings.STRIPE_API_KEY = "not-a-secret-key"

    with pytest.raises(PaymentProviderError) as raised:
        StripeProvider().customer_ensure(org)

    assert raised.value.code == "payment_provider_error"
    assert raised.value.message.startswith("Stripe could not create the customer: ")
    assert not BillingProfile.objects.filter(organization=org).exclude(customer_id="").exists()


# --- Saved cards -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card", "expiry"),
    [("pm_card_visa", (12, 2030)), ("from_number", (7, 2031))],
    ids=["stripe-test-payment-method", "card-number"],
)
def test_card_saved_through_a_setup_intent_is_read_back(stripe_provider, api, org, card, expiry):
    customer = stripe_provider.customer_ensure(org)
    if card == "from_number":
        card = _create_card(api, VISA, *expiry).id
    intent = api.v1.setup_intents.create(
        params={"customer": customer, "usage": "off_session", "metadata": {"purpose": "save"}}
    )

    intent = api.v1.setup_intents.confirm(intent.id, params={"payment_method": card})
    details = stripe_provider.card_details(intent.payment_method)

    assert intent.status == "succeeded"
    assert details.provider_id == intent.payment_method
    assert (details.brand, details.last4) == ("visa", "4242")
    assert (details.exp_month, details.exp_year) == expiry


def test_an_unknown_payment_method_is_a_provider_error(stripe_provider):
    with pytest.raises(PaymentProviderError, match="Stripe could not read the saved card"):
        stripe_provider.card_details("pm_does_not_exist")


# --- Off-session charges ---------------------------------------------------------------------


def test_off_session_charge_succeeds(stripe_provider, api, org):
    method = _save_card(stripe_provider, api, org, VISA)
    payment = _payment(org, "25.00", purpose="auto_recharge", payment_method=method)

    result = stripe_provider.charge_off_session(payment, method)

    assert result.status == PaymentStatus.SUCCEEDED
    assert result.failure_message == ""
    intent = api.v1.payment_intents.retrieve(result.payment_intent_id)
    assert (intent.amount, intent.currency, intent.status) == (2500, "usd", "succeeded")
    assert intent.customer == BillingProfile.objects.get(organization=org).customer_id
    assert intent.payment_method == method.provider_id
    assert intent.metadata.to_dict() == {
        "payment_id": str(payment.pk),
        "organization_id": str(org.pk),
    }


def test_a_declined_charge_is_a_failed_result_not_an_error(stripe_provider, api, org):
    method = _save_card(stripe_provider, api, org, DECLINED_ON_CHARGE)
    payment = _payment(org, "10.00", purpose="auto_recharge", payment_method=method)

    result = stripe_provider.charge_off_session(payment, method)

    # localstripe's decline names only the charge; the intent id Stripe sends is tested below.
    assert result.status == PaymentStatus.FAILED
    assert result.failure_message == "Your card was declined."


def test_a_card_that_needs_3d_secure_requires_action(stripe_provider, api, org):
    method = _save_card(stripe_provider, api, org, NEEDS_3DS)
    payment = _payment(org, "10.00", purpose="auto_recharge", payment_method=method)

    result = stripe_provider.charge_off_session(payment, method)

    assert result.status == PaymentStatus.REQUIRES_ACTION
    assert api.v1.payment_intents.retrieve(result.payment_intent_id).status == "requires_action"


def test_a_charge_stripe_refuses_raises_a_provider_error(stripe_provider, api, org):
    method = _save_card(stripe_provider, api, org, VISA)
    method.provider_id = "pm_does_not_exist"
    payment = _payment(org, "10.00", purpose="auto_recharge")

    with pytest.raises(PaymentProviderError, match="Stripe could not charge the saved card"):
        stripe_provider.charge_off_session(payment, method)


# --- Refunds ---------------------------------------------------------------------------------


def test_full_refund(stripe_provider, api, org):
    payment = _paid(stripe_provider, api, org, "25.00")
    refund = _refund(payment, "25.00")

    result = stripe_provider.refund(refund)

    assert result.provider_id.startswith("re_")
    assert result.status == "succeeded"
    stored = api.v1.refunds.retrieve(result.provider_id)
    assert stored.amount == 2500
    assert stored.metadata.to_dict() == {"payment_id": str(payment.pk), "refund_id": str(refund.pk)}


def test_partial_refunds_add_up(stripe_provider, api, org):
    payment = _paid(stripe_provider, api, org, "25.00")

    first = stripe_provider.refund(_refund(payment, "10.00"))
    second = stripe_provider.refund(_refund(payment, "5.50"))

    listed = api.v1.refunds.list(params={"payment_intent": payment.payment_intent_id}).data
    assert {r.id: r.amount for r in listed} == {first.provider_id: 1000, second.provider_id: 550}


def test_a_payment_without_an_intent_cannot_be_refunded(stripe_provider, org):
    refund = _refund(_payment(org, "25.00", status=PaymentStatus.SUCCEEDED), "5.00")

    with pytest.raises(PaymentProviderError) as raised:
        stripe_provider.refund(refund)

    assert raised.value.code == "payment_not_refundable"


# --- Webhook signatures ----------------------------------------------------------------------

NOW = 1_900_000_000


@pytest.fixture
def webhook_provider(settings) -> StripeProvider:
    """Verifying webhooks needs only the signing secret, not an API key or a server."""
    settings.STRIPE_API_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = payloads.WEBHOOK_SECRET
    return StripeProvider()


def _completed_event() -> dict:
    return payloads.checkout_session_completed(41, 7, 2500, "USD", payment_intent="pi_test_41")


@pytest.mark.parametrize("age", [0, 299, 300])
def test_a_correctly_signed_event_parses(webhook_provider, age):
    sent = _completed_event()
    with time_machine.travel(NOW, tick=False):
        body, headers = payloads.signed(sent, timestamp=NOW - age)
        event = webhook_provider.webhook_event(body, headers)

    assert (event.id, event.type) == (sent["id"], "checkout.session.completed")
    assert event.object == sent["data"]["object"]
    assert event.payload == sent
    assert type(event.object) is dict
    assert event.object["metadata"] == {"organization_id": "7", "payment_id": "41"}


@pytest.mark.parametrize("age", [301, 3600])
def test_a_signature_older_than_the_tolerance_is_refused(webhook_provider, age):
    with time_machine.travel(NOW, tick=False):
        body, headers = payloads.signed(_completed_event(), timestamp=NOW - age)
        with pytest.raises(WebhookSignatureInvalid, match="tolerance"):
            webhook_provider.webhook_event(body, headers)


def test_a_signature_made_with_another_secret_is_refused(webhook_provider):
    body, headers = payloads.signed(_completed_event(), secret="whsec_someone_else")

    with pytest.raises(WebhookSignatureInvalid) as raised:
        webhook_provider.webhook_event(body, headers)

    assert raised.value.code == "signature_invalid"


def test_an_altered_body_is_refused(webhook_provider):
    body, headers = payloads.signed(_completed_event())
    altered = body.replace(b'"amount_total": 2500', b'"amount_total": 250000')
    assert altered != body

    with pytest.raises(WebhookSignatureInvalid):
        webhook_provider.webhook_event(altered, headers)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Stripe-Signature": ""}, {"Stripe-Signature": "garbage"}, {"Stripe-Signature": "t=1"}],
    ids=["missing", "empty", "unparsable", "no-v1"],
)
def test_a_missing_or_malformed_signature_is_refused(webhook_provider, headers):
    body, _ = payloads.signed(_completed_event())

    with pytest.raises(WebhookSignatureInvalid):
        webhook_provider.webhook_event(body, headers)


def test_a_signed_body_that_is_not_json_is_refused(webhook_provider):
    body = b"not json"
    headers = {"Stripe-Signature": payloads.sign(body, payloads.WEBHOOK_SECRET, NOW)}

    with time_machine.travel(NOW, tick=False), pytest.raises(WebhookSignatureInvalid, match="JSON"):
        webhook_provider.webhook_event(body, headers)


@pytest.mark.parametrize("name", ["stripe-signature", "HTTP_STRIPE_SIGNATURE"])
def test_the_signature_header_is_found_in_any_case_or_in_meta(webhook_provider, name):
    body, headers = payloads.signed(_completed_event())

    event = webhook_provider.webhook_event(body, {name: headers["Stripe-Signature"]})

    assert event.type == "checkout.session.completed"


def test_localstripes_own_signed_webhooks_verify(stripe_provider, api, org, localstripe):
    """localstripe signs the events it sends as Stripe does; the provider accepts them."""
    with RecordingServer(lambda request: (200, {})) as receiver:
        localstripe.webhook_register(
            "portal-test",
            url=f"{receiver.url}/webhooks/stripe",
            secret=payloads.WEBHOOK_SECRET,
            events=["payment_intent.succeeded"],
        )
        try:
            method = _save_card(stripe_provider, api, org, VISA)
            payment = _payment(org, "12.34", payment_method=method)
            result = stripe_provider.charge_off_session(payment, method)
            delivery = receiver.wait_for(lambda r: result.payment_intent_id.encode() in r.body)
        finally:  # localstripe keeps webhook targets across resets: send nothing more here
            localstripe.webhook_register(
                "portal-test", url=f"{receiver.url}/gone", secret="unused", events=[]
            )

    event = stripe_provider.webhook_event(delivery.body, delivery.headers)

    assert delivery.headers["stripe-signature"].startswith("t=")
    assert event.type == "payment_intent.succeeded"
    assert event.object["id"] == result.payment_intent_id
    assert event.object["amount"] == 1234
    assert event.object["metadata"]["payment_id"] == str(payment.pk)
    assert event.payload == json.loads(delivery.body)


# --- What localstripe lacks: Checkout and Stripe's error bodies, against a recording server ---


class StripeDouble:
    """Answers the few Stripe endpoints these tests call with Stripe's example objects, or with
    what a test puts in ``answers[path]``; records every request."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict]] = {}
        self.server: RecordingServer

    def __call__(self, request: Recorded) -> tuple[int, dict]:
        if request.path in self.answers:
            return self.answers[request.path]
        if request.path == "/v1/customers":
            return 200, payloads.stripe_object("customer", id="cus_test_recorded")
        if request.path == "/v1/checkout/sessions":
            session_id = payloads.unique_id("cs")
            return 200, payloads.stripe_object(
                "checkout.session",
                id=session_id,
                mode=request.params["mode"],
                status="open",
                url=f"https://checkout.stripe.com/c/pay/{session_id}",
            )
        return 404, {"error": {"type": "invalid_request_error", "message": "Unrecognized URL"}}

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.server.requests if r.path == path]


@pytest.fixture
def stripe_double(settings) -> Iterator[StripeDouble]:
    double = StripeDouble()
    with RecordingServer(double) as server:
        double.server = server
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_API_KEY = payloads.STRIPE_API_KEY
        yield double


@pytest.mark.parametrize(
    ("amount", "currency", "minor"), [("25.00", "USD", "2500"), ("0.01", "CNY", "1")]
)
def test_checkout_start_asks_stripe_for_a_payment_session(
    stripe_double, org, amount, currency, minor
):
    payment = _payment(org, amount, currency)

    redirect = StripeProvider().checkout_start(
        payment, success_url="https://portal.test/ok", cancel_url="https://portal.test/cancel"
    )

    (customer_request,) = stripe_double.requests_to("/v1/customers")
    (request,) = stripe_double.requests_to("/v1/checkout/sessions")
    assert customer_request.headers["idempotency-key"].startswith(f"customer:{org.pk}:")
    assert customer_request.params["metadata[organization_id]"] == str(org.pk)
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {payloads.STRIPE_API_KEY}"
    assert request.headers["idempotency-key"] == payment.idempotency_key
    assert request.params == {
        "mode": "payment",
        "customer": "cus_test_recorded",
        "client_reference_id": str(payment.pk),
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": currency.lower(),
        "line_items[0][price_data][unit_amount]": minor,
        "line_items[0][price_data][product_data][name]": "Credit top-up",
        "metadata[payment_id]": str(payment.pk),
        "metadata[organization_id]": str(org.pk),
        "payment_intent_data[metadata][payment_id]": str(payment.pk),
        "payment_intent_data[metadata][organization_id]": str(org.pk),
        "success_url": "https://portal.test/ok",
        "cancel_url": "https://portal.test/cancel",
    }
    assert redirect.checkout_id.startswith("cs_test_")
    assert redirect.url == f"https://checkout.stripe.com/c/pay/{redirect.checkout_id}"


def test_setup_start_asks_stripe_for_a_setup_session(stripe_double, org):
    BillingProfile.objects.create(organization=org, provider="stripe", customer_id="cus_known")
    provider = StripeProvider()

    redirect = provider.setup_start(
        org, success_url="https://p.test/ok", cancel_url="https://p.test/no"
    )
    provider.setup_start(org, success_url="https://p.test/ok", cancel_url="https://p.test/no")

    assert stripe_double.requests_to("/v1/customers") == []
    first, second = stripe_double.requests_to("/v1/checkout/sessions")
    assert first.params == {
        "mode": "setup",
        "customer": "cus_known",
        "payment_method_types[0]": "card",
        "metadata[organization_id]": str(org.pk),
        "metadata[purpose]": "save_card",
        "setup_intent_data[metadata][organization_id]": str(org.pk),
        "setup_intent_data[metadata][purpose]": "save_card",
        "success_url": "https://p.test/ok",
        "cancel_url": "https://p.test/no",
    }
    assert first.headers["idempotency-key"].startswith(f"setup:{org.pk}:")
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert redirect.url.endswith(redirect.checkout_id)


def _card_error(code: str, message: str, intent_id: str) -> tuple[int, dict]:
    """Stripe's 402 body for a confirmation that failed: it carries the PaymentIntent."""
    intent = payloads.stripe_object(
        "payment_intent", id=intent_id, status="requires_payment_method", next_action=None
    )
    error = {"type": "card_error", "code": code, "message": message, "payment_intent": intent}
    return 402, {"error": error}


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("card_declined", "Your card has insufficient funds.", PaymentStatus.FAILED),
        ("authentication_required", "Authentication required.", PaymentStatus.REQUIRES_ACTION),
    ],
)
def test_stripes_card_errors_keep_the_intent_and_message(stripe_double, org, code, message, status):
    stripe_double.answers["/v1/payment_intents"] = _card_error(code, message, "pi_test_declined")
    method = PaymentMethod(provider="stripe", provider_id="pm_test_saved")

    result = StripeProvider().charge_off_session(_payment(org, "10.00"), method)

    assert (result.status, result.payment_intent_id) == (status, "pi_test_declined")
    assert result.failure_message == message


def test_stripe_rejecting_a_request_raises_with_its_message(stripe_double, org):
    stripe_double.answers["/v1/payment_intents"] = (
        400,
        {"error": {"type": "invalid_request_error", "message": "No such PaymentMethod: 'pm_x'"}},
    )

    with pytest.raises(PaymentProviderError) as raised:
        StripeProvider().charge_off_session(
            _payment(org, "10.00"), PaymentMethod(provider="stripe", provider_id="pm_x")
        )

    assert raised.value.message == (
        "Stripe could not charge the saved card: No such PaymentMethod: 'pm_x'."
    )


# --- The payload builders the webhook handler tests use --------------------------------------

BUILDERS: dict[str, Callable[[], dict]] = {
    "checkout.session.completed": lambda: payloads.checkout_session_completed(
        41, 7, 2500, "USD", payment_intent="pi_test_41"
    ),
    "checkout.session.async_payment_succeeded": lambda: payloads.checkout_async_payment_succeeded(
        41, 7, 2500, "USD", payment_intent="pi_test_41"
    ),
    "checkout.session.async_payment_failed": lambda: payloads.checkout_async_payment_failed(
        41, 7, 2500, "USD", payment_intent="pi_test_41"
    ),
    "checkout.session.expired": lambda: payloads.checkout_session_expired(41, 7, 2500, "USD"),
    "setup checkout.session.completed": lambda: payloads.setup_checkout_completed(
        7, setup_intent="seti_test_7"
    ),
    "setup_intent.succeeded": lambda: payloads.setup_intent_succeeded(
        7, payment_method="pm_test_7", setup_intent_id="seti_test_7"
    ),
    "payment_intent.succeeded": lambda: payloads.payment_intent_event(
        "payment_intent.succeeded",
        payment_id=41,
        organization_id=7,
        amount_minor=2500,
        currency="USD",
        payment_intent_id="pi_test_41",
    ),
    "payment_intent.payment_failed": lambda: payloads.payment_intent_event(
        "payment_intent.payment_failed",
        payment_id=41,
        organization_id=7,
        amount_minor=2500,
        currency="USD",
        payment_intent_id="pi_test_41",
        failure_message="Your card has insufficient funds.",
    ),
    "charge.refunded": lambda: payloads.charge_refunded(
        "pi_test_41", 2500, "USD", [("re_test_1", 1000), ("re_test_2", 550)]
    ),
}

EXPECTED = {
    "checkout.session.completed": {
        "mode": "payment",
        "payment_status": "paid",
        "payment_intent": "pi_test_41",
        "amount_total": 2500,
        "currency": "usd",
        "metadata": {"payment_id": "41", "organization_id": "7"},
    },
    "checkout.session.async_payment_succeeded": {"payment_status": "paid"},
    "checkout.session.async_payment_failed": {"payment_status": "unpaid"},
    "checkout.session.expired": {"status": "expired", "payment_intent": None},
    "setup checkout.session.completed": {
        "mode": "setup",
        "setup_intent": "seti_test_7",
        "payment_intent": None,
        "metadata": {"organization_id": "7", "purpose": "save_card"},
    },
    "setup_intent.succeeded": {
        "id": "seti_test_7",
        "status": "succeeded",
        "payment_method": "pm_test_7",
        "metadata": {"organization_id": "7", "purpose": "save_card"},
    },
    "payment_intent.succeeded": {
        "id": "pi_test_41",
        "status": "succeeded",
        "amount": 2500,
        "currency": "usd",
        "metadata": {"payment_id": "41", "organization_id": "7"},
        "last_payment_error": None,
    },
    "payment_intent.payment_failed": {
        "status": "requires_payment_method",
        "last_payment_error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card has insufficient funds.",
        },
    },
    "charge.refunded": {"payment_intent": "pi_test_41", "amount_refunded": 1550, "refunded": False},
}


@pytest.mark.parametrize("name", BUILDERS)
def test_built_events_verify_and_keep_stripes_shapes(webhook_provider, name):
    sent = BUILDERS[name]()
    body, headers = payloads.signed(sent)

    event = webhook_provider.webhook_event(body, headers)

    assert event.type == name.removeprefix("setup ")
    assert event.object.items() >= EXPECTED[name].items()
    # Every field a builder sets is one Stripe's own object has: no invented shapes.
    example = payloads.stripe_object(event.object["object"])
    assert set(event.object) <= set(example)
    assert set(event.payload) <= set(payloads.stripe_object("event"))
    if name == "charge.refunded":
        refunds = event.object["refunds"]["data"]
        assert [(r["id"], r["amount"]) for r in refunds] == [
            ("re_test_1", 1000),
            ("re_test_2", 550),
        ]
        assert set(refunds[0]) <= set(payloads.stripe_object("refund"))
