"""Stripe as the payment provider: Checkout for top-ups and for saving a card, off-session
PaymentIntents for auto-recharge and invoices, refunds, and signed webhook events.

Events keep Stripe's own shapes, so ``billing.payments.events`` reads them as it reads the fake
provider's. Every create call sends an idempotency key the portal stored before the first try.

The tests run this against localstripe (a Stripe-compatible fake server), which lacks
Checkout Sessions and idempotency keys; it also does not attach a card to the customer when a
SetupIntent is confirmed, and its decline errors name the charge but not the PaymentIntent.
Checkout and Stripe's real error shapes are tested against a recording HTTP server answering
with Stripe's own example objects (``tests/billing/stripe_payloads.py``).
"""

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import stripe
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.models import BillingProfile, Payment, PaymentMethod, PaymentStatus, Refund
from billing.payments.base import (
    CardDetails,
    ChargeResult,
    PaymentProvider,
    PaymentProviderError,
    ProviderEvent,
    Redirect,
    RefundResult,
    stripe_signed_event,
)
from portal.accounts.models import Organization
from portal.money import to_minor

TOP_UP_PRODUCT_NAME = "Credit top-up"

# A PaymentIntent's status, as the portal's PaymentStatus. ``requires_payment_method`` after a
# confirmation means the attempt failed; the portal never captures manually, so
# ``requires_capture`` and ``processing`` both mean the money is still on its way.
_INTENT_STATUS = {
    "succeeded": PaymentStatus.SUCCEEDED,
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    "requires_confirmation": PaymentStatus.PENDING,
    "requires_capture": PaymentStatus.PENDING,
    "processing": PaymentStatus.PENDING,
    "requires_payment_method": PaymentStatus.FAILED,
    "canceled": PaymentStatus.FAILED,
}


def _provider_error(action: str, exc: stripe.StripeError) -> PaymentProviderError:
    """Stripe's exception as the portal's error, naming what was being done."""
    reason = (exc.user_message or type(exc).__name__).rstrip(".")
    return PaymentProviderError(
        _("Stripe could not %(action)s: %(reason)s.") % {"action": action, "reason": reason},
        details={"stripe_code": exc.code or "", "request_id": exc.request_id or ""},
    )


@contextmanager
def _stripe_errors(action: str) -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise _provider_error(action, exc) from exc


class StripeProvider(PaymentProvider):
    name = "stripe"

    def __init__(self) -> None:
        self.api_key: str = settings.STRIPE_API_KEY
        self.webhook_secret: str = settings.STRIPE_WEBHOOK_SECRET
        self.api_base: str = settings.STRIPE_API_BASE
        self.tolerance: int = settings.WEBHOOK_TOLERANCE_SECONDS
        self._client: stripe.StripeClient | None = None

    @property
    def client(self) -> stripe.StripeClient:
        """Built on first use, so a webhook-only process needs no API key."""
        if self._client is None:
            if not self.api_key:
                raise ImproperlyConfigured(
                    "STRIPE_API_KEY is not set; the Stripe payment provider needs a secret key."
                )
            # Retries are safe: every call that changes something carries an idempotency key.
            self._client = stripe.StripeClient(
                self.api_key,
                base_addresses={"api": self.api_base} if self.api_base else {},
                max_network_retries=2,
            )
        return self._client

    # --- Customers ------------------------------------------------------------------------

    def customer_ensure(self, organization: Organization) -> str:
        profile, _created = BillingProfile.objects.get_or_create(organization=organization)
        if profile.customer_id and profile.provider == self.name:
            return profile.customer_id
        # The key names the organisation and its creation time: a retry after a crash gets the
        # same customer, and two databases sharing a test account cannot get each other's.
        key = f"customer:{organization.pk}:{organization.created_at.isoformat()}"
        with _stripe_errors("create the customer"):
            customer = self.client.v1.customers.create(
                params={
                    "name": organization.name,
                    "email": organization.billing_email,
                    "metadata": {"organization_id": str(organization.pk)},
                },
                options={"idempotency_key": key},
            )
        profile.provider = self.name
        profile.customer_id = customer.id
        profile.updated_at = timezone.now()
        profile.save(update_fields=["provider", "customer_id", "updated_at"])
        return customer.id

    # --- Hosted pages ---------------------------------------------------------------------

    def checkout_start(self, payment: Payment, *, success_url: str, cancel_url: str) -> Redirect:
        metadata = _payment_metadata(payment)
        params = {
            "mode": "payment",
            "customer": self.customer_ensure(payment.organization),
            "client_reference_id": str(payment.pk),
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": payment.currency.lower(),
                        "unit_amount": to_minor(payment.amount, payment.currency),
                        "product_data": {"name": TOP_UP_PRODUCT_NAME},
                    },
                }
            ],
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        with _stripe_errors("start the checkout"):
            session = self.client.v1.checkout.sessions.create(
                params=params, options={"idempotency_key": payment.idempotency_key}
            )
        return Redirect(url=session.url, checkout_id=session.id)

    def setup_start(
        self, organization: Organization, *, success_url: str, cancel_url: str
    ) -> Redirect:
        # The SetupIntent carries the metadata too: ``setup_intent.succeeded`` has no session.
        metadata = {"organization_id": str(organization.pk), "purpose": "save_card"}
        params = {
            "mode": "setup",
            "customer": self.customer_ensure(organization),
            "payment_method_types": ["card"],
            "metadata": metadata,
            "setup_intent_data": {"metadata": metadata},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        # Each click is a new page, so the key only guards this one request's retries.
        key = f"setup:{organization.pk}:{uuid.uuid4()}"
        with _stripe_errors("start saving a card"):
            session = self.client.v1.checkout.sessions.create(
                params=params, options={"idempotency_key": key}
            )
        return Redirect(url=session.url, checkout_id=session.id)

    # --- Saved cards ----------------------------------------------------------------------

    def card_details(self, payment_method_id: str) -> CardDetails:
        with _stripe_errors("read the saved card"):
            method = self.client.v1.payment_methods.retrieve(payment_method_id)
        card = getattr(method, "card", None)
        if card is None:
            raise PaymentProviderError(
                _("Stripe payment method %(payment_method_id)s is not a card.")
                % {"payment_method_id": payment_method_id},
                code=BillingErrorCode.PAYMENT_METHOD_NOT_CARD,
            )
        return CardDetails(
            provider_id=method.id,
            brand=card.brand,
            last4=card.last4,
            exp_month=int(card.exp_month),
            exp_year=int(card.exp_year),
        )

    def charge_off_session(self, payment: Payment, payment_method: PaymentMethod) -> ChargeResult:
        """A declined card or one that needs the customer is an answer, not an error: only
        Stripe failing (or refusing the request itself) raises ``PaymentProviderError``."""
        params = {
            "amount": to_minor(payment.amount, payment.currency),
            "currency": payment.currency.lower(),
            "customer": self.customer_ensure(payment.organization),
            "payment_method": payment_method.provider_id,
            "off_session": True,
            "confirm": True,
            "metadata": _payment_metadata(payment),
        }
        try:
            intent = self.client.v1.payment_intents.create(
                params=params, options={"idempotency_key": payment.idempotency_key}
            )
        except stripe.CardError as exc:
            return _declined(exc)
        except stripe.StripeError as exc:
            raise _provider_error("charge the saved card", exc) from exc
        status = _INTENT_STATUS.get(intent.status, PaymentStatus.PENDING)
        message = ""
        if status == PaymentStatus.FAILED:
            error = getattr(intent, "last_payment_error", None)
            message = getattr(error, "message", None) or f"The payment was {intent.status}."
        return ChargeResult(status=status, payment_intent_id=intent.id, failure_message=message)

    # --- Refunds --------------------------------------------------------------------------

    def refund(self, refund: Refund) -> RefundResult:
        payment = refund.payment
        if not payment.payment_intent_id:
            raise PaymentProviderError(
                _("Payment %(pk)s has no Stripe PaymentIntent to refund.") % {"pk": payment.pk},
                code=BillingErrorCode.PAYMENT_NOT_REFUNDABLE,
            )
        with _stripe_errors("refund the payment"):
            created = self.client.v1.refunds.create(
                params={
                    "payment_intent": payment.payment_intent_id,
                    "amount": to_minor(refund.amount, payment.currency),
                    "metadata": {"payment_id": str(payment.pk), "refund_id": str(refund.pk)},
                },
                options={"idempotency_key": refund.idempotency_key},
            )
        return RefundResult(provider_id=created.id, status=created.status)

    # --- Webhooks -------------------------------------------------------------------------

    def webhook_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        if not self.webhook_secret:
            raise ImproperlyConfigured(
                "STRIPE_WEBHOOK_SECRET is not set; Stripe webhooks cannot be verified."
            )
        return stripe_signed_event(
            body, headers, secret=self.webhook_secret, tolerance=self.tolerance
        )


def _payment_metadata(payment: Payment) -> dict[str, str]:
    return {"payment_id": str(payment.pk), "organization_id": str(payment.organization_id)}


def _declined(exc: stripe.CardError) -> ChargeResult:
    """Stripe's card error on an off-session charge. ``authentication_required`` means the bank
    wants the customer (3-D Secure); anything else is a decline."""
    intent = getattr(exc.error, "payment_intent", None) if exc.error else None
    intent_id = getattr(intent, "id", "") or ""
    message = exc.user_message or "The card was declined."
    if exc.code == "authentication_required":
        return ChargeResult(
            status=PaymentStatus.REQUIRES_ACTION,
            payment_intent_id=intent_id,
            failure_message=message,
        )
    return ChargeResult(
        status=PaymentStatus.FAILED, payment_intent_id=intent_id, failure_message=message
    )
