"""The payment provider interface: what the portal asks of Stripe, or of the fake provider.

Providers speak Stripe's shapes: their webhook events have Stripe's types and objects
(``checkout.session``, ``payment_intent``, ``setup_intent``, ``charge``), with amounts as integers
in the currency's minor unit, so one handler (``billing.payments.events``) applies them all.
Every call that changes something at the provider sends the idempotency key the portal stored
before the first try (``Payment.idempotency_key``, ``Refund.idempotency_key``).
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from portal.errors import PortalError


class PaymentProviderError(PortalError):
    """The provider refused or failed a call (shown to the customer with its code)."""

    status = 502
    code = BillingErrorCode.PAYMENT_PROVIDER_ERROR


class CardDeclined(PortalError):
    status = 402
    code = BillingErrorCode.CARD_DECLINED


class WebhookSignatureInvalid(PortalError):
    status = 400
    code = BillingErrorCode.SIGNATURE_INVALID


@dataclass(frozen=True)
class Redirect:
    """Where to send the customer to pay or to save a card, and the provider's id for it."""

    url: str
    checkout_id: str


@dataclass(frozen=True)
class CardDetails:
    provider_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeResult:
    """The outcome of an off-session charge, as the provider answered it synchronously.

    ``status`` is a ``PaymentStatus`` value: succeeded, failed, requires_action or pending."""

    status: str
    payment_intent_id: str
    failure_message: str = ""


@dataclass(frozen=True)
class RefundResult:
    provider_id: str
    status: str


@dataclass(frozen=True)
class ProviderEvent:
    """A verified webhook event: its unique id, Stripe type and ``data.object``."""

    id: str
    type: str
    object: dict
    payload: dict = field(default_factory=dict)


class PaymentProvider(ABC):
    name: str

    @abstractmethod
    def customer_ensure(self, organization) -> str:
        """The organisation's customer id at the provider, created once (kept on its
        ``BillingProfile``)."""

    @abstractmethod
    def checkout_start(self, payment, *, success_url: str, cancel_url: str) -> Redirect:
        """A hosted page where the customer pays ``payment`` (a top-up). Its metadata carries
        ``payment_id`` and ``organization_id``; completion is learnt from the webhook only."""

    @abstractmethod
    def setup_start(self, organization, *, success_url: str, cancel_url: str) -> Redirect:
        """A hosted page where the customer saves a card for later off-session charges."""

    @abstractmethod
    def card_details(self, payment_method_id: str) -> CardDetails:
        """Brand, last four digits and expiry of a saved payment method."""

    @abstractmethod
    def charge_off_session(self, payment, payment_method) -> ChargeResult:
        """Charge a saved card without the customer (auto-recharge, invoices)."""

    @abstractmethod
    def refund(self, refund) -> RefundResult:
        """Refund part or all of a succeeded payment."""

    @abstractmethod
    def webhook_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        """Verify the signature on the raw body and parse it; ``WebhookSignatureInvalid`` if the
        signature is missing, wrong or older than the tolerance (300 s)."""


def header_value(headers: Mapping[str, str], name: str) -> str:
    """A header from request.headers, request.META or a plain dict, whatever its case."""
    wanted = {name.lower(), "http_" + name.lower().replace("-", "_")}
    for key, value in headers.items():
        if key.lower() in wanted:
            return value
    return ""


def stripe_signed_event(
    body: bytes, headers: Mapping[str, str], *, secret: str, tolerance: int
) -> ProviderEvent:
    """Verify Stripe's signature scheme (``Stripe-Signature: t=..,v1=..``, an HMAC of the raw
    body) and parse the event. Both providers sign this way, so both verify here."""
    import stripe

    signature = header_value(headers, "Stripe-Signature")
    if not signature:
        raise WebhookSignatureInvalid(_("The request has no Stripe-Signature header."))
    try:
        stripe.WebhookSignature.verify_header(body.decode(), signature, secret, tolerance)
        payload = json.loads(body)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(
            _("The Stripe signature is not valid: %(user_message)s")
            % {"user_message": exc.user_message}
        ) from exc
    except ValueError as exc:  # not UTF-8 or not JSON, though correctly signed
        raise WebhookSignatureInvalid(_("The webhook body is not a JSON Stripe event.")) from exc
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookSignatureInvalid(_("The webhook body is not a Stripe event (no data.object)."))
    try:
        return ProviderEvent(
            id=payload["id"], type=payload["type"], object=data["object"], payload=payload
        )
    except KeyError:
        raise WebhookSignatureInvalid(_("The Stripe event has no id or type.")) from None
