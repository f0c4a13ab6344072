"""Stripe webhook events for tests, built from Stripe's own example objects.

localstripe has no Checkout Sessions, so the events a Checkout sends are built here: each
builder copies the example object from ``tests/data/stripe/fixtures3.json`` (Stripe's
OpenAPI fixtures, trimmed to the objects used here) and sets the fields the portal reads, so a
handler test reads fields where Stripe really puts them. Amounts are integers in minor units; currencies are sent lower-case,
as Stripe does. Ids not given are made unique per call (``Payment`` ids of a provider are
unique in the database). ``signed`` turns an event into the body and headers Stripe would send.
"""

import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES_PATH = Path(__file__).resolve().parents[1] / "data/stripe/fixtures3.json"

# What the ``stripe_settings`` fixture configures.
STRIPE_API_KEY = "sk_test_portal"
WEBHOOK_SECRET = "whsec_test_portal"
CUSTOMER_ID = "cus_test_portal"


@cache
def _fixtures() -> dict[str, Any]:
    return json.loads(FIXTURES_PATH.read_text())["resources"]


def unique_id(prefix: str) -> str:
    """A Stripe-looking id, e.g. ``unique_id("pi")`` -> ``pi_test_3f9c...``."""
    return f"{prefix}_test_{uuid.uuid4().hex[:24]}"


def stripe_object(name: str, **fields: Any) -> dict[str, Any]:
    """A deep copy of Stripe's example ``name`` object (e.g. ``"checkout.session"``) with
    ``fields`` set on it."""
    obj = copy.deepcopy(_fixtures()[name])
    obj.update(fields)
    return obj


def event(
    type: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """An ``event`` of ``type`` whose ``data.object`` is ``obj``."""
    return stripe_object(
        "event",
        id=event_id or unique_id("evt"),
        type=type,
        created=int(time.time()) if created is None else created,
        data={"object": obj},
        request={"id": unique_id("req"), "idempotency_key": None},
    )


# --- Checkout --------------------------------------------------------------------------------


def checkout_session(
    *,
    organization_id: int | str,
    payment_id: int | str | None = None,
    amount_minor: int | None = None,
    currency: str = "usd",
    mode: str = "payment",
    status: str = "complete",
    payment_status: str = "paid",
    payment_intent: str | None = None,
    setup_intent: str | None = None,
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``checkout.session`` object. Without ``metadata``, it carries what ``checkout_start``
    (payment mode) or ``setup_start`` (setup mode) sends."""
    if metadata is None:
        metadata = {"organization_id": str(organization_id)}
        if mode == "payment":
            metadata["payment_id"] = str(payment_id)
        else:
            metadata["purpose"] = "save_card"
    session_id = session_id or unique_id("cs")
    return stripe_object(
        "checkout.session",
        id=session_id,
        mode=mode,
        status=status,
        payment_status=payment_status,
        payment_intent=payment_intent,
        setup_intent=setup_intent,
        customer=customer,
        client_reference_id=str(payment_id) if payment_id is not None else None,
        metadata=metadata,
        currency=currency.lower() if mode == "payment" else None,
        amount_subtotal=amount_minor,
        amount_total=amount_minor,
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        shipping_cost=None,
        shipping_address_collection=None,
        currency_conversion=None,
        url=None if status != "open" else f"https://checkout.stripe.com/c/pay/{session_id}",
    )


def checkout_session_completed(
    payment_id: int | str,
    organization_id: int | str,
    amount_minor: int,
    currency: str,
    *,
    payment_status: str = "paid",
    payment_intent: str | None = None,
    mode: str = "payment",
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``checkout.session.completed`` for a top-up: paid, or ``payment_status="unpaid"`` when
    an asynchronous method (a bank debit) has still to settle."""
    session = checkout_session(
        organization_id=organization_id,
        payment_id=payment_id,
        amount_minor=amount_minor,
        currency=currency,
        mode=mode,
        payment_status=payment_status,
        payment_intent=payment_intent or unique_id("pi"),
        customer=customer,
        session_id=session_id,
    )
    return event("checkout.session.completed", session, event_id=event_id)


def checkout_async_payment_succeeded(
    payment_id: int | str,
    organization_id: int | str,
    amount_minor: int,
    currency: str,
    *,
    payment_intent: str | None = None,
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The delayed payment of a completed session settled."""
    session = checkout_session(
        organization_id=organization_id,
        payment_id=payment_id,
        amount_minor=amount_minor,
        currency=currency,
        payment_status="paid",
        payment_intent=payment_intent or unique_id("pi"),
        customer=customer,
        session_id=session_id,
    )
    return event("checkout.session.async_payment_succeeded", session, event_id=event_id)


def checkout_async_payment_failed(
    payment_id: int | str,
    organization_id: int | str,
    amount_minor: int,
    currency: str,
    *,
    payment_intent: str | None = None,
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The delayed payment of a completed session failed."""
    session = checkout_session(
        organization_id=organization_id,
        payment_id=payment_id,
        amount_minor=amount_minor,
        currency=currency,
        payment_status="unpaid",
        payment_intent=payment_intent or unique_id("pi"),
        customer=customer,
        session_id=session_id,
    )
    return event("checkout.session.async_payment_failed", session, event_id=event_id)


def checkout_session_expired(
    payment_id: int | str,
    organization_id: int | str,
    amount_minor: int,
    currency: str,
    *,
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The customer left the page unpaid until it expired (no PaymentIntent was confirmed)."""
    session = checkout_session(
        organization_id=organization_id,
        payment_id=payment_id,
        amount_minor=amount_minor,
        currency=currency,
        status="expired",
        payment_status="unpaid",
        customer=customer,
        session_id=session_id,
    )
    return event("checkout.session.expired", session, event_id=event_id)


def setup_checkout_completed(
    organization_id: int | str,
    *,
    setup_intent: str | None = None,
    customer: str = CUSTOMER_ID,
    session_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``checkout.session.completed`` in setup mode: a card was saved. The session names the
    SetupIntent by id only; the card is in ``setup_intent_succeeded``'s object."""
    session = checkout_session(
        organization_id=organization_id,
        mode="setup",
        payment_status="no_payment_required",
        setup_intent=setup_intent or unique_id("seti"),
        customer=customer,
        session_id=session_id,
    )
    return event("checkout.session.completed", session, event_id=event_id)


def setup_intent_succeeded(
    organization_id: int | str,
    *,
    payment_method: str | None = None,
    customer: str = CUSTOMER_ID,
    setup_intent_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``setup_intent.succeeded`` with the metadata ``setup_start`` puts on the SetupIntent."""
    intent = stripe_object(
        "setup_intent",
        id=setup_intent_id or unique_id("seti"),
        status="succeeded",
        customer=customer,
        payment_method=payment_method or unique_id("pm"),
        metadata={"organization_id": str(organization_id), "purpose": "save_card"},
        usage="off_session",
        last_setup_error=None,
        next_action=None,
        payment_method_configuration_details=None,
    )
    intent["client_secret"] = f"{intent['id']}_secret_test"
    return event("setup_intent.succeeded", intent, event_id=event_id)


# --- PaymentIntents and charges --------------------------------------------------------------

PAYMENT_INTENT_STATUS = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.payment_failed": "requires_payment_method",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.processing": "processing",
    "payment_intent.canceled": "canceled",
    "payment_intent.created": "requires_payment_method",
}


def payment_intent_event(
    type: str,
    *,
    payment_id: int | str,
    organization_id: int | str,
    amount_minor: int,
    currency: str,
    payment_intent_id: str | None = None,
    payment_method: str | None = None,
    customer: str = CUSTOMER_ID,
    failure_message: str = "Your card was declined.",
    status: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A ``payment_intent.*`` event (``succeeded``, ``payment_failed``, ``requires_action``,
    ``processing``, ``canceled``) with the status Stripe gives it; ``payment_failed`` carries
    ``last_payment_error.message`` = ``failure_message``."""
    status = status or PAYMENT_INTENT_STATUS[type]
    intent_id = payment_intent_id or unique_id("pi")
    failed = type == "payment_intent.payment_failed"
    intent = stripe_object(
        "payment_intent",
        id=intent_id,
        client_secret=f"{intent_id}_secret_test",
        amount=amount_minor,
        amount_received=amount_minor if status == "succeeded" else 0,
        currency=currency.lower(),
        customer=customer,
        status=status,
        payment_method=payment_method or unique_id("pm"),
        metadata={"payment_id": str(payment_id), "organization_id": str(organization_id)},
        latest_charge=unique_id("ch") if status == "succeeded" or failed else None,
        last_payment_error=(
            {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": failure_message,
            }
            if failed
            else None
        ),
        next_action=(
            {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            if status == "requires_action"
            else None
        ),
        canceled_at=int(time.time()) if status == "canceled" else None,
        cancellation_reason="abandoned" if status == "canceled" else None,
        processing=None,
        transfer_data=None,
        payment_method_configuration_details=None,
    )
    return event(type, intent, event_id=event_id)


def charge_refunded(
    payment_intent: str,
    amount_minor: int,
    currency: str,
    refunds: Sequence[tuple[str, int]],
    *,
    charge_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``charge.refunded`` for the charge of ``payment_intent``: ``refunds`` are its
    ``(refund id, amount in minor units)`` so far, ``amount_refunded`` is their sum."""
    charge_id = charge_id or unique_id("ch")
    currency = currency.lower()
    refund_objects = [
        stripe_object(
            "refund",
            id=refund_id,
            amount=amount,
            charge=charge_id,
            payment_intent=payment_intent,
            currency=currency,
            status="succeeded",
        )
        for refund_id, amount in refunds
    ]
    refunded = sum(amount for _, amount in refunds)
    charge = stripe_object(
        "charge",
        id=charge_id,
        amount=amount_minor,
        amount_captured=amount_minor,
        amount_refunded=refunded,
        captured=True,
        refunded=refunded >= amount_minor,
        currency=currency,
        customer=CUSTOMER_ID,
        payment_intent=payment_intent,
        refunds={
            "object": "list",
            "data": refund_objects,
            "has_more": False,
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        source=None,
        transfer_data=None,
    )
    return event("charge.refunded", charge, event_id=event_id)


# --- Signing ---------------------------------------------------------------------------------


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe sends: ``t=<ts>,v1=<HMAC-SHA256 of "<ts>.<body>">``
    (computed here, not by the SDK, so tests check the SDK against Stripe's documented scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def signed(
    event_dict: dict[str, Any], secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the event as Stripe delivers it, signed at ``timestamp`` (now)."""
    body = json.dumps(event_dict).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(body, secret, timestamp),
    }
    return body, headers
