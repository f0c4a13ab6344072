"""Provider webhooks: received, stored once, and applied by a task.

``webhook_receive`` (the endpoint) verifies the signature on the raw body and stores the event,
unique per (provider, event id), then queues ``billing.webhook_process`` after commit and answers
at once. ``webhook_process`` applies the event and sets ``processed_at`` in the same transaction
as its effect, under the event's row lock, so a duplicate delivery, a retried task or two
workers apply it once. Every effect is itself idempotent and order-free (a payment's success is
final; refunds are keyed by their id), so events arriving out of order give the same ledger.
Events left unprocessed (a broker outage) are picked up by ``webhooks_retry``.
"""

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import BillingProfile, Payment, WebhookEvent
from billing.payments import provider as payment_provider
from billing.payments import services
from billing.payments.base import WebhookSignatureInvalid
from portal.background import enqueue_on_commit
from portal.money import from_minor
from portal.observability.metrics import webhook_observed

log = logging.getLogger(__name__)


def webhook_receive(
    provider_name: str, body: bytes, headers: Mapping[str, str]
) -> tuple[WebhookEvent, bool]:
    """Verify and store one delivery; returns (event, created). Raises
    ``WebhookSignatureInvalid`` (400) for a bad signature and stores nothing."""
    provider = payment_provider(provider_name)
    try:
        event = provider.webhook_event(body, headers)
    except WebhookSignatureInvalid:
        webhook_observed(provider=provider_name, outcome="bad_signature")
        raise
    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                provider=provider_name, event_id=event.id, type=event.type, payload=event.payload
            )
    except IntegrityError:
        webhook_observed(provider=provider_name, outcome="duplicate")
        return WebhookEvent.objects.get(provider=provider_name, event_id=event.id), False
    webhook_observed(provider=provider_name, outcome="received")
    # once the event is safely stored; a broker outage loses nothing (webhooks_retry finds
    # unprocessed events)
    from billing.payments.tasks import webhook_process as webhook_process_task

    enqueue_on_commit(webhook_process_task, stored.pk)
    return stored, True


def webhook_process(event_pk: int) -> str:
    """Apply one stored event, once."""
    provider_name = None
    try:
        with transaction.atomic():
            event = WebhookEvent.objects.select_for_update().get(pk=event_pk)
            if event.processed_at is not None:
                return f"already processed: {event.outcome}"
            provider_name = event.provider
            handler = HANDLERS.get(event.type)
            data = (event.payload.get("data") or {}).get("object") or {}
            outcome = handler(event.provider, data) if handler else f"ignored ({event.type})"
            event.processed_at = timezone.now()
            event.outcome = outcome[:300]
            event.attempts += 1
            event.save(update_fields=["processed_at", "outcome", "attempts"])
    except Exception:
        if provider_name is not None:
            webhook_observed(provider=provider_name, outcome="failed")
        raise
    webhook_observed(provider=provider_name, outcome="processed")
    return outcome


def webhooks_retry(*, older_than_seconds: int = 60) -> int:
    """Process events stored but not processed (their task was lost). Returns how many."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    pending = WebhookEvent.objects.filter(processed_at__isnull=True, received_at__lt=cutoff)
    done = 0
    for pk in pending.order_by("received_at").values_list("pk", flat=True)[:500]:
        try:
            webhook_process(pk)
            done += 1
        except Exception:  # one bad event must not stop the others; it stays unprocessed
            log.exception("webhook event %s failed", pk)
            WebhookEvent.objects.filter(pk=pk).update(attempts=F("attempts") + 1)
    return done


# --- Handlers: Stripe's shapes, from either provider ----------------------------------------


def _payment_for(provider_name: str, obj: Mapping) -> Payment | None:
    """The payment an object is about: by our metadata first, then by the provider's ids."""
    metadata = obj.get("metadata") or {}
    payment = None
    if str(metadata.get("payment_id") or "").isdigit():
        payment = Payment.objects.filter(
            provider=provider_name, pk=int(metadata["payment_id"])
        ).first()
    if payment is None and obj.get("object") == "checkout.session" and obj.get("id"):
        payment = Payment.objects.filter(provider=provider_name, checkout_id=obj["id"]).first()
    intent = obj.get("payment_intent") if obj.get("object") != "payment_intent" else obj.get("id")
    if payment is None and isinstance(intent, str) and intent:
        payment = Payment.objects.filter(provider=provider_name, payment_intent_id=intent).first()
    if payment is not None:
        organization_id = str(metadata.get("organization_id") or "")
        if organization_id and organization_id != str(payment.organization_id):
            log.warning("event for payment %s names another organisation", payment.pk)
            return None
    return payment


def _intent_id(obj: Mapping) -> str:
    if obj.get("object") == "payment_intent":
        return obj.get("id") or ""
    intent = obj.get("payment_intent")
    if isinstance(intent, Mapping):
        return intent.get("id") or ""
    return intent or ""


def _checkout_completed(provider_name: str, obj: Mapping) -> str:
    if obj.get("mode") == "setup":
        # The card itself arrives with setup_intent.succeeded (sent for Checkout too).
        return "setup checkout completed"
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    if obj.get("payment_status") in ("paid", "no_payment_required"):
        services.payment_succeeded(payment.pk, payment_intent_id=_intent_id(obj))
        return f"payment {payment.pk} succeeded"
    services._payment_update(
        payment, payment_intent_id=_intent_id(obj) or payment.payment_intent_id
    )
    return f"payment {payment.pk} awaiting an asynchronous payment"


def _async_succeeded(provider_name: str, obj: Mapping) -> str:
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    services.payment_succeeded(payment.pk, payment_intent_id=_intent_id(obj))
    return f"payment {payment.pk} succeeded"


def _async_failed(provider_name: str, obj: Mapping) -> str:
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    services.payment_failed(
        payment.pk, message="The payment did not go through.", payment_intent_id=_intent_id(obj)
    )
    return f"payment {payment.pk} failed"


def _checkout_expired(provider_name: str, obj: Mapping) -> str:
    """The customer never paid on the checkout page: the top-up is canceled (not if paid)."""
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    services.payment_canceled(payment.pk, message="The checkout page expired unpaid.")
    return f"payment {payment.pk} canceled"


def _intent_failed(provider_name: str, obj: Mapping) -> str:
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    error = obj.get("last_payment_error") or {}
    services.payment_failed(
        payment.pk,
        message=error.get("message") or "The card was declined.",
        payment_intent_id=_intent_id(obj),
    )
    return f"payment {payment.pk} failed"


def _organization_for(provider_name: str, obj: Mapping):
    metadata = obj.get("metadata") or {}
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    profile = None
    if customer:
        profile = (
            BillingProfile.objects.filter(customer_id=customer)
            .select_related("organization")
            .first()
        )
    if profile is not None:
        return profile.organization
    if str(metadata.get("organization_id") or "").isdigit():
        from portal.accounts.models import Organization

        return Organization.objects.filter(pk=int(metadata["organization_id"])).first()
    return None


def _setup_succeeded(provider_name: str, obj: Mapping) -> str:
    method_id = obj.get("payment_method")
    if isinstance(method_id, Mapping):
        method_id = method_id.get("id")
    organization = _organization_for(provider_name, obj)
    if not method_id or organization is None:
        return "no card or organisation"
    details = payment_provider(provider_name).card_details(method_id)
    method = services.card_saved(
        organization=organization, provider_name=provider_name, details=details
    )
    return f"card {method.pk} saved"


def _charge_refunded(provider_name: str, obj: Mapping) -> str:
    payment = _payment_for(provider_name, obj)
    if payment is None:
        return "no matching payment"
    currency = payment.currency
    refunds = ((obj.get("refunds") or {}).get("data")) or []
    new = 0
    for refund in refunds:
        if refund.get("status", "succeeded") != "succeeded":
            continue
        ours = str((refund.get("metadata") or {}).get("refund_id") or "")
        new += services.refund_recorded(
            payment_id=payment.pk,
            provider_id=refund["id"],
            amount=from_minor(refund["amount"], currency),
            refund_id=int(ours) if ours.isdigit() else None,
        )
    if not refunds and obj.get("amount_refunded"):
        # No refund list: record what is refunded beyond what we know, under the charge's id.
        known = Payment.objects.get(pk=payment.pk).refunded_amount
        extra = from_minor(obj["amount_refunded"], currency) - known
        if extra > Decimal(0):
            new += services.refund_recorded(
                payment_id=payment.pk,
                provider_id=f"{obj.get('id')}:{obj['amount_refunded']}",
                amount=extra,
            )
    return f"{new} refund(s) recorded for payment {payment.pk}"


HANDLERS: dict[str, Callable[[str, Mapping], str]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _async_succeeded,
    "checkout.session.async_payment_failed": _async_failed,
    "checkout.session.expired": _checkout_expired,
    "payment_intent.succeeded": _async_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "setup_intent.succeeded": _setup_succeeded,
    "charge.refunded": _charge_refunded,
}
