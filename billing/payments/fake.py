"""The fake payment provider: the default for ``make run`` and tests.

It behaves like Stripe where the portal can see it: a hosted checkout page (served by the
portal itself, ``billing:fake_checkout``) where Stripe's test card numbers decide the outcome,
saved cards, off-session charges, refunds, and signed webhook events in Stripe's shapes, which
go through the same endpoint code (signature check included) as real ones.

Test cards (any expiry in the future, any CVC):
  4242 4242 4242 4242, 5555 5555 5555 4444   succeed
  4000 0000 0000 0002                        declined
  4000 0000 0000 9995                        declined: insufficient funds
  4000 0000 0000 0341                        saves, but off-session charges are declined
  4000 0025 0000 3155                        off-session charges need authentication
"""

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import stripe
from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from billing.errors import BillingErrorCode
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
from portal.money import to_minor

SALT = "billing.fake-checkout"
# A checkout page works this long (Stripe's sessions: 24 hours); billing.payments.services.
# checkouts_expire then cancels the top-up it was for.
CHECKOUT_MAX_AGE_SECONDS = 3600
DECLINES = {
    "4000000000000002": gettext_noop("Your card was declined."),
    "4000000000009995": gettext_noop("Your card has insufficient funds."),
}
OFF_SESSION_DECLINE = "0341"
OFF_SESSION_AUTHENTICATE = "3155"


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number]
    checksum = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        checksum += digit
    return len(digits) >= 12 and checksum % 10 == 0


def _brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or number.startswith("2"):
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "card"


@dataclass(frozen=True)
class CardCheck:
    """The outcome of a card typed on the fake checkout page (``message`` in English, marked
    for translation: the page translates it)."""

    ok: bool
    message: str = ""
    field: str = "card_number"


def card_check(number: str, exp_month: str, exp_year: str) -> CardCheck:
    number = "".join(ch for ch in (number or "") if not ch.isspace())
    if not number.isdigit() or not luhn_valid(number):
        return CardCheck(False, gettext_noop("Your card number is invalid."))
    try:
        month, year = int(exp_month), int(exp_year)
    except (TypeError, ValueError):
        return CardCheck(False, gettext_noop("Enter the expiry month and year."), "expiry")
    if year < 100:
        year += 2000
    today = timezone.now().date()
    if not 1 <= month <= 12 or (year, month) < (today.year, today.month):
        return CardCheck(False, gettext_noop("Your card has expired."), "expiry")
    if number in DECLINES:
        return CardCheck(False, DECLINES[number])
    return CardCheck(True)


def payment_method_id(number: str, exp_month: int, exp_year: int) -> str:
    number = "".join(ch for ch in number if ch.isdigit())
    if exp_year < 100:
        exp_year += 2000
    return (
        f"fakepm_{_brand(number)}_{number[-4:]}_{exp_month:02d}_{exp_year}_{uuid.uuid4().hex[:8]}"
    )


class FakeProvider(PaymentProvider):
    name = "fake"

    @property
    def secret(self) -> str:
        return settings.FAKE_PAYMENTS_WEBHOOK_SECRET

    # --- hosted pages ---

    def customer_ensure(self, organization) -> str:
        from billing.payments.services import profile_for

        profile = profile_for(organization)
        if not profile.customer_id or profile.provider != self.name:
            profile.customer_id = f"fakecus_{organization.pk}"
            profile.provider = self.name
            profile.save(update_fields=["customer_id", "provider"])
        return profile.customer_id

    def checkout_start(self, payment, *, success_url: str, cancel_url: str) -> Redirect:
        self.customer_ensure(payment.organization)
        checkout_id = f"fakecs_{uuid.uuid4().hex}"
        token = signing.dumps(
            {
                "mode": "payment",
                "payment": payment.pk,
                "cs": checkout_id,
                "ok": success_url,
                "back": cancel_url,
            },
            salt=SALT,
        )
        return Redirect(url=reverse("billing:fake_checkout", args=[token]), checkout_id=checkout_id)

    def setup_start(self, organization, *, success_url: str, cancel_url: str) -> Redirect:
        self.customer_ensure(organization)
        checkout_id = f"fakecs_{uuid.uuid4().hex}"
        token = signing.dumps(
            {
                "mode": "setup",
                "org": organization.pk,
                "cs": checkout_id,
                "ok": success_url,
                "back": cancel_url,
            },
            salt=SALT,
        )
        return Redirect(url=reverse("billing:fake_checkout", args=[token]), checkout_id=checkout_id)

    @staticmethod
    def checkout_read(token: str, *, max_age: int = CHECKOUT_MAX_AGE_SECONDS) -> dict:
        return signing.loads(token, salt=SALT, max_age=max_age)

    def checkout_paid(self, session: dict, payment) -> None:
        """The customer paid on the fake page: send what Stripe would send."""
        intent = f"fakepi_{uuid.uuid4().hex[:20]}"
        metadata = {"payment_id": str(payment.pk), "organization_id": str(payment.organization_id)}
        self.emit(
            "checkout.session.completed",
            {
                "id": session["cs"],
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "payment_intent": intent,
                "customer": f"fakecus_{payment.organization_id}",
                "amount_total": to_minor(payment.amount, payment.currency),
                "currency": payment.currency.lower(),
                "metadata": metadata,
            },
        )

    def card_added(self, session: dict, organization, method_id: str) -> None:
        self.emit(
            "setup_intent.succeeded",
            {
                "id": f"fakeseti_{uuid.uuid4().hex[:20]}",
                "object": "setup_intent",
                "status": "succeeded",
                "customer": f"fakecus_{organization.pk}",
                "payment_method": method_id,
                "metadata": {"organization_id": str(organization.pk)},
            },
        )

    # --- API ---

    def card_details(self, payment_method_id: str) -> CardDetails:
        try:
            _pm, brand, last4, month, year, _rest = payment_method_id.split("_")
            return CardDetails(payment_method_id, brand, last4, int(month), int(year))
        except ValueError:
            raise PaymentProviderError(
                _("Unknown payment method '%(payment_method_id)s'.")
                % {"payment_method_id": payment_method_id},
                code=BillingErrorCode.PAYMENT_METHOD_UNKNOWN,
            ) from None

    def charge_off_session(self, payment, payment_method) -> ChargeResult:
        intent = f"fakepi_{uuid.uuid5(uuid.NAMESPACE_URL, payment.idempotency_key).hex[:20]}"
        obj = {
            "id": intent,
            "object": "payment_intent",
            "amount": to_minor(payment.amount, payment.currency),
            "currency": payment.currency.lower(),
            "customer": f"fakecus_{payment.organization_id}",
            "payment_method": payment_method.provider_id,
            "metadata": {
                "payment_id": str(payment.pk),
                "organization_id": str(payment.organization_id),
            },
        }
        last4 = payment_method.last4
        if last4 == OFF_SESSION_DECLINE:
            message = "Your card was declined."
            self.emit(
                "payment_intent.payment_failed",
                {
                    **obj,
                    "status": "requires_payment_method",
                    "last_payment_error": {"code": "card_declined", "message": message},
                },
            )
            return ChargeResult("failed", intent, message)
        if last4 == OFF_SESSION_AUTHENTICATE:
            return ChargeResult("requires_action", intent, "Authentication required.")
        self.emit("payment_intent.succeeded", {**obj, "status": "succeeded"})
        return ChargeResult("succeeded", intent)

    def refund(self, refund) -> RefundResult:
        payment = refund.payment
        refund_id = f"fakere_{uuid.uuid5(uuid.NAMESPACE_URL, refund.idempotency_key).hex[:20]}"
        self.emit(
            "charge.refunded",
            {
                "id": f"fakech_{payment.payment_intent_id}",
                "object": "charge",
                "payment_intent": payment.payment_intent_id,
                "metadata": {
                    "payment_id": str(payment.pk),
                    "organization_id": str(payment.organization_id),
                },
                "refunds": {
                    "object": "list",
                    "data": [
                        {
                            "id": refund_id,
                            "object": "refund",
                            "amount": to_minor(refund.amount, payment.currency),
                            "status": "succeeded",
                            "metadata": {"refund_id": str(refund.pk)},
                        }
                    ],
                },
            },
        )
        return RefundResult(refund_id, "succeeded")

    # --- events ---

    def event(self, type_: str, obj: dict) -> dict:
        return {
            "id": f"evt_fake_{uuid.uuid4().hex}",
            "object": "event",
            "type": type_,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        }

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        signature = stripe.WebhookSignature._compute_signature(
            f"{timestamp}.{body.decode()}", self.secret
        )
        return {"Stripe-Signature": f"t={timestamp},v1={signature}"}

    def emit(self, type_: str, obj: dict) -> None:
        """Deliver an event through the webhook path, signature check included."""
        from billing.payments.events import webhook_receive

        body = json.dumps(self.event(type_, obj)).encode()
        webhook_receive(self.name, body, self.sign(body))

    def webhook_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        return stripe_signed_event(
            body, headers, secret=self.secret, tolerance=settings.WEBHOOK_TOLERANCE_SECONDS
        )
