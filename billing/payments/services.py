"""Paying: top-ups through a hosted checkout, saved cards, auto-recharge, invoice charges and
refunds.

The rule for every call to a provider: the ``Payment`` (or ``Refund``) row and its idempotency
key are committed *before* the first call, so a crash or a retry asks the provider for the same
payment again, never a second one. Credit is added to the ledger only when the provider says
the money arrived (a webhook, or the synchronous answer of an off-session charge), with the
ledger key ``payment:<id>``: whichever comes first posts it, the other finds it there.
"""

import uuid
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.ledger.services import ledger_post
from billing.models import (
    BillingProfile,
    EntryKind,
    LedgerEntry,
    Payment,
    PaymentMethod,
    PaymentPurpose,
    PaymentStatus,
    Refund,
)
from billing.payments import hooks
from billing.payments import provider as payment_provider
from billing.payments.base import (
    CardDetails,
    ChargeResult,
    PaymentProviderError,
    Redirect,
)
from portal.accounts.locks import lock_organization
from portal.accounts.models import Organization
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.errors import Conflict, ErrorCode, InvalidInput, NotFound, PermissionDenied
from portal.money import parse_amount

CREDIT_KINDS = (EntryKind.TOP_UP, EntryKind.GRANT, EntryKind.PAYMENT)
# How a payment was made, in the ledger's description (card unless a wallet paid it).
PAID_BY = {"alipay": "Alipay", "wechatpay": "WeChat Pay"}


def profile_for(organization: Organization, *, lock: bool = False) -> BillingProfile:
    profile, _created = BillingProfile.objects.get_or_create(
        organization=organization,
        defaults={"payment_terms_days": settings.BILLING_PAYMENT_TERMS_DAYS},
    )
    if lock:
        profile = BillingProfile.objects.select_for_update().get(pk=profile.pk)
    return profile


def _top_up_amount(value, currency: str) -> Decimal:
    amount = parse_amount(value, currency)
    low, high = settings.BILLING_TOP_UP_MIN, settings.BILLING_TOP_UP_MAX
    if not low <= amount <= high:
        message = _("Top up between %(low)s and %(high)s %(currency)s.") % {
            "low": low,
            "high": high,
            "currency": currency,
        }
        raise InvalidInput(
            message, code=BillingErrorCode.AMOUNT_OUT_OF_RANGE, details={"amount": message}
        )
    return amount


def top_up_start(*, actor: Actor, amount, success_url: str, cancel_url: str) -> Redirect:
    """Create a pending top-up and the provider's hosted page to pay it.

    The credit is added later, by the provider's webhook, never by the customer's return to
    ``success_url`` (which anyone could open)."""
    actor = authorize(actor, Action.BILLING_MANAGE)
    organization = actor.organization
    amount = _top_up_amount(amount, organization.currency)
    provider = payment_provider()
    with transaction.atomic(durable=True):
        payment = Payment.objects.create(
            organization=organization,
            purpose=PaymentPurpose.TOP_UP,
            amount=amount,
            currency=organization.currency,
            provider=provider.name,
            idempotency_key=f"top-up:{uuid.uuid4()}",
            created_by=actor.label,
        )
        audit_record(
            actor=actor,
            action="payment.top_up_started",
            target=payment,
            details={"amount": str(amount), "currency": payment.currency},
        )
    try:
        redirect = provider.checkout_start(payment, success_url=success_url, cancel_url=cancel_url)
    except PaymentProviderError as exc:
        _payment_update(payment, status=PaymentStatus.FAILED, failure_message=exc.message)
        raise
    _payment_update(payment, checkout_id=redirect.checkout_id)
    return redirect


def card_save_start(*, actor: Actor, success_url: str, cancel_url: str) -> Redirect:
    """The provider's hosted page to save a card for auto-recharge and invoices."""
    actor = authorize(actor, Action.BILLING_MANAGE)
    return payment_provider().setup_start(
        actor.organization, success_url=success_url, cancel_url=cancel_url
    )


def _payment_update(payment: Payment, **fields) -> None:
    fields["updated_at"] = timezone.now()
    Payment.objects.filter(pk=payment.pk).update(**fields)
    for name, value in fields.items():
        setattr(payment, name, value)


# --- Outcomes (from webhooks or synchronous answers) ---------------------------------------


@transaction.atomic
def payment_succeeded(payment_id: int, *, payment_intent_id: str = "") -> Payment:
    """The money arrived: mark the payment and credit it, once (ledger key ``payment:<id>``).

    A success is final: a failure reported after it (events out of order) changes nothing."""
    payment = Payment.objects.select_related("organization").get(pk=payment_id)
    lock_organization(payment.organization_id)
    payment = Payment.objects.select_for_update().select_related("organization").get(pk=payment_id)
    if payment_intent_id and not payment.payment_intent_id:
        payment.payment_intent_id = payment_intent_id
    if payment.status != PaymentStatus.SUCCEEDED:
        payment.status = PaymentStatus.SUCCEEDED
        payment.succeeded_at = timezone.now()
        payment.failure_message = ""
    payment.updated_at = timezone.now()
    payment.save()
    if payment.purpose == PaymentPurpose.INVOICE and payment.invoice_id:
        invoice = payment.invoice
        if invoice.status == "finalized":
            hooks.invoice_paid(  # invoicing marks it paid (registered in BillingConfig.ready)
                invoice,
                reference=payment.payment_intent_id or f"payment {payment.pk}",
                actor=Actor.system(),
            )
    else:
        _entry, created = ledger_post(
            organization=payment.organization,
            kind=EntryKind.TOP_UP,
            amount=payment.amount,
            idempotency_key=f"payment:{payment.pk}",
            description=f"{payment.get_purpose_display()} paid by "
            + PAID_BY.get(payment.provider, "card"),
            actor_label=payment.created_by,
            reference=payment.payment_intent_id or payment.checkout_id,
            payment=payment,
        )
        if created:
            hooks.credit_arrived(payment.organization)  # the spend controls hear of it
    return payment


@transaction.atomic
def payment_failed(payment_id: int, *, message: str, payment_intent_id: str = "") -> Payment:
    """The provider refused the payment. Ignored once the payment succeeded."""
    payment = Payment.objects.select_for_update().get(pk=payment_id)
    if payment_intent_id and not payment.payment_intent_id:
        payment.payment_intent_id = payment_intent_id
    if payment.status != PaymentStatus.SUCCEEDED:
        payment.status = PaymentStatus.FAILED
        payment.failure_message = (message or "The payment failed.")[:300]
    payment.updated_at = timezone.now()
    payment.save()
    return payment


@transaction.atomic
def payment_canceled(payment_id: int, *, message: str) -> Payment:
    """Abandoned before paying. Only a pending payment is canceled; a success stays."""
    payment = Payment.objects.select_for_update().get(pk=payment_id)
    if payment.status in (PaymentStatus.PENDING, PaymentStatus.REQUIRES_ACTION):
        payment.status = PaymentStatus.CANCELED
        payment.failure_message = message[:300]
        payment.updated_at = timezone.now()
        payment.save()
    return payment


def checkouts_expire(now=None) -> int:
    """Cancel top-ups left on the fake provider's checkout page after it stopped working.

    Stripe tells of an abandoned Checkout with ``checkout.session.expired`` (handled with the
    other webhooks); the fake provider has no such event, so its pending checkouts are expired
    here. Returns how many were canceled.
    """
    from billing.payments.fake import CHECKOUT_MAX_AGE_SECONDS

    now = now or timezone.now()
    stale = Payment.objects.filter(
        provider="fake",
        status=PaymentStatus.PENDING,
        checkout_id__startswith="fakecs_",
        created_at__lt=now - timedelta(seconds=CHECKOUT_MAX_AGE_SECONDS),
    ).values_list("pk", flat=True)
    canceled = 0
    for payment_id in stale:
        payment = payment_canceled(payment_id, message="The checkout page expired before paying.")
        canceled += payment.status == PaymentStatus.CANCELED
    return canceled


@transaction.atomic
def payment_requires_action(payment_id: int, *, payment_intent_id: str = "") -> Payment:
    payment = Payment.objects.select_for_update().get(pk=payment_id)
    if payment_intent_id and not payment.payment_intent_id:
        payment.payment_intent_id = payment_intent_id
    if payment.status in (PaymentStatus.PENDING,):
        payment.status = PaymentStatus.REQUIRES_ACTION
        payment.failure_message = "The bank asks the cardholder to authenticate this payment."
    payment.updated_at = timezone.now()
    payment.save()
    return payment


def _charge_apply(payment: Payment, result: ChargeResult) -> Payment:
    if result.status == PaymentStatus.SUCCEEDED:
        return payment_succeeded(payment.pk, payment_intent_id=result.payment_intent_id)
    if result.status == PaymentStatus.REQUIRES_ACTION:
        return payment_requires_action(payment.pk, payment_intent_id=result.payment_intent_id)
    if result.status == PaymentStatus.FAILED:
        return payment_failed(
            payment.pk, message=result.failure_message, payment_intent_id=result.payment_intent_id
        )
    if result.payment_intent_id:
        _payment_update(payment, payment_intent_id=result.payment_intent_id)
    return payment


def default_payment_method(organization: Organization) -> PaymentMethod | None:
    return PaymentMethod.objects.filter(
        organization=organization, is_default=True, removed_at__isnull=True
    ).first()


def charge_saved_card(
    *,
    organization: Organization,
    purpose: str,
    amount: Decimal,
    idempotency_key: str,
    created_by: str,
    invoice=None,
) -> Payment | None:
    """Charge the default card off-session (auto-recharge, an invoice). The payment row and key
    are committed first; the same key again returns the payment already made. None without a
    saved card."""
    method = default_payment_method(organization)
    if method is None:
        return None
    existing = Payment.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None and existing.status != PaymentStatus.PENDING:
        return existing
    payment = existing or Payment.objects.create(
        organization=organization,
        purpose=purpose,
        invoice=invoice,
        amount=amount,
        currency=organization.currency,
        provider=method.provider,
        idempotency_key=idempotency_key,
        payment_method=method,
        created_by=created_by,
    )
    try:
        result = payment_provider(method.provider).charge_off_session(payment, method)
    except PaymentProviderError as exc:
        return payment_failed(payment.pk, message=exc.message)
    return _charge_apply(payment, result)


# --- Saved cards -----------------------------------------------------------------------------


@transaction.atomic
def card_saved(
    *, organization: Organization, provider_name: str, details: CardDetails
) -> PaymentMethod:
    """Record a card the provider saved (a setup webhook). The first card becomes the default."""
    lock_organization(organization.pk)
    method, created = PaymentMethod.objects.get_or_create(
        provider=provider_name,
        provider_id=details.provider_id,
        defaults={
            "organization": organization,
            "brand": details.brand,
            "last4": details.last4,
            "exp_month": details.exp_month,
            "exp_year": details.exp_year,
        },
    )
    if method.organization_id != organization.pk:
        raise Conflict(
            _("This card belongs to another organisation."), code=BillingErrorCode.CARD_OTHER_ORG
        )
    if created and default_payment_method(organization) is None:
        method.is_default = True
        method.save(update_fields=["is_default"])
    if created:
        audit_record(
            actor=Actor.system(),
            action="payment_method.saved",
            target=method,
            organization=organization,
            details={"brand": method.brand, "last4": method.last4},
        )
    return method


def _card_for(actor: Actor, method_id: int) -> PaymentMethod:
    method = (
        PaymentMethod.objects.select_for_update()
        .filter(organization=actor.organization, pk=method_id, removed_at__isnull=True)
        .first()
    )
    if method is None:
        raise NotFound(_("No such saved card."), code=ErrorCode.NOT_FOUND)
    return method


@transaction.atomic(durable=True)
def card_make_default(*, actor: Actor, method_id: int) -> PaymentMethod:
    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    method = _card_for(actor, method_id)
    PaymentMethod.objects.filter(organization=actor.organization, is_default=True).update(
        is_default=False
    )
    method.is_default = True
    method.save(update_fields=["is_default"])
    audit_record(actor=actor, action="payment_method.default", target=method)
    return method


@transaction.atomic(durable=True)
def card_remove(*, actor: Actor, method_id: int) -> PaymentMethod:
    """Forget a card here (past payments keep pointing at it). Auto-recharge stops if it was the
    only card left."""
    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    method = _card_for(actor, method_id)
    was_default = method.is_default
    method.removed_at = timezone.now()
    method.is_default = False
    method.save(update_fields=["removed_at", "is_default"])
    if was_default:
        successor = (
            PaymentMethod.objects.filter(organization=actor.organization, removed_at__isnull=True)
            .order_by("-created_at")
            .first()
        )
        if successor is not None:
            successor.is_default = True
            successor.save(update_fields=["is_default"])
        else:
            BillingProfile.objects.filter(organization=actor.organization).update(
                auto_recharge_enabled=False, updated_at=timezone.now()
            )
    audit_record(actor=actor, action="payment_method.removed", target=method)
    return method


@transaction.atomic(durable=True)
def auto_recharge_configure(
    *, actor: Actor, enabled: bool, threshold=None, amount=None
) -> BillingProfile:
    """Top up the saved card's way when the balance falls below ``threshold``."""
    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    organization = actor.organization
    profile = profile_for(organization, lock=True)
    if enabled:
        currency = organization.currency
        errors = {}
        try:
            threshold = parse_amount(threshold, currency, field="threshold", allow_zero=True)
        except InvalidInput as exc:
            errors.update(exc.details)
        try:
            amount = _top_up_amount(amount, currency)
        except InvalidInput as exc:
            errors["amount"] = exc.details.get("amount", exc.message)
        if errors:
            raise InvalidInput(
                _("Check the auto-recharge settings."),
                code=BillingErrorCode.AUTO_RECHARGE_INVALID,
                details=errors,
            )
        if default_payment_method(organization) is None:
            raise Conflict(
                _("Save a card first: auto-recharge charges your default card."),
                code=BillingErrorCode.NO_PAYMENT_METHOD,
            )
        profile.auto_recharge_threshold = threshold
        profile.auto_recharge_amount = amount
    profile.auto_recharge_enabled = bool(enabled)
    profile.updated_at = timezone.now()
    profile.save()
    audit_record(
        actor=actor,
        action="billing.auto_recharge",
        target=profile,
        details={
            "enabled": profile.auto_recharge_enabled,
            "threshold": str(profile.auto_recharge_threshold),
            "amount": str(profile.auto_recharge_amount),
        },
    )
    return profile


def last_credit_id(organization: Organization) -> int:
    """The id of the latest credit (top-up, grant, payment): a period that a new credit ends."""
    return (
        LedgerEntry.objects.filter(
            account__organization=organization, kind__in=CREDIT_KINDS, amount__gt=0
        )
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
        or 0
    )


def auto_recharge_maybe(organization: Organization, balance: Decimal) -> Payment | None:
    """Charge the saved card once per credit period when the balance is below the threshold:
    a declined card is not charged again until a credit arrives or the settings change."""
    profile = profile_for(organization)
    if not profile.auto_recharge_enabled or profile.auto_recharge_threshold is None:
        return None
    if balance >= profile.auto_recharge_threshold:
        return None
    key = (
        f"auto-recharge:{organization.pk}:{last_credit_id(organization)}:"
        f"{profile.updated_at.timestamp():.0f}"
    )
    return charge_saved_card(
        organization=organization,
        purpose=PaymentPurpose.AUTO_RECHARGE,
        amount=profile.auto_recharge_amount,
        idempotency_key=key,
        created_by="auto-recharge",
    )


# --- Refunds ---------------------------------------------------------------------------------


def refund_create(*, actor: Actor, payment_id: int, amount, reason: str) -> Refund:
    """Give back part or all of a succeeded card payment (operators). The credit it bought is
    taken off the ledger when the provider confirms (ledger key ``refund:<provider id>``)."""
    if not actor.operator:
        raise PermissionDenied(
            _("Only operators refund payments."), code=BillingErrorCode.OPERATORS_ONLY
        )
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the payment is refunded."), code=BillingErrorCode.REASON_REQUIRED
        )
    with transaction.atomic(durable=True):
        # the organisation first (the house order): a fapiao's cover is checked under it
        organization_id = (
            Payment.objects.filter(pk=payment_id).values_list("organization_id", flat=True).get()
        )
        lock_organization(organization_id)
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        amount = parse_amount(amount, payment.currency)
        if payment.status != PaymentStatus.SUCCEEDED:
            raise Conflict(
                _("Only a succeeded payment can be refunded."),
                code=BillingErrorCode.PAYMENT_NOT_PAID,
            )
        if payment.purpose == PaymentPurpose.BANK_TRANSFER:  # no provider to refund through
            raise Conflict(
                _("A bank transfer is given back by a transfer from the bank, not here."),
                code=BillingErrorCode.PAYMENT_NOT_REFUNDABLE,
            )
        pending = sum((r.amount for r in payment.refunds.filter(status="pending")), Decimal(0))
        refundable = payment.amount - payment.refunded_amount - pending
        if amount > refundable:
            raise InvalidInput(
                _("At most %(refundable)s %(currency)s can still be refunded.")
                % {"refundable": refundable, "currency": payment.currency},
                code=BillingErrorCode.REFUND_TOO_LARGE,
                details={"refundable": str(refundable)},
            )
        if payment.invoice_id is not None:  # what the invoice kept shrinks: is it on a fapiao?
            from billing.fapiao.services import corrections_check

            corrections_check(payment.invoice, reduction=amount)
        refund = Refund.objects.create(
            payment=payment,
            amount=amount,
            reason=reason[:300],
            idempotency_key=f"refund:{uuid.uuid4()}",
            created_by=actor.label,
        )
        audit_record(
            actor=actor,
            action="payment.refund",
            target=payment,
            organization=payment.organization,
            details={"amount": str(amount), "reason": reason},
        )
    try:
        result = payment_provider(payment.provider).refund(refund)
    except PaymentProviderError:
        Refund.objects.filter(pk=refund.pk).update(status="failed")
        raise
    if result.status == "succeeded":
        refund_recorded(
            payment_id=payment.pk,
            provider_id=result.provider_id,
            amount=amount,
            refund_id=refund.pk,
        )
    else:
        Refund.objects.filter(pk=refund.pk, provider_id="").update(provider_id=result.provider_id)
    refund.refresh_from_db()
    return refund


@transaction.atomic
def refund_recorded(
    *, payment_id: int, provider_id: str, amount: Decimal, refund_id: int | None = None
) -> bool:
    """A refund the provider confirmed (its answer or its webhook, in either order): take its
    amount off the ledger once per provider refund id. Returns whether it was new. Refunds made
    at the provider directly are recorded too."""
    payment = Payment.objects.select_for_update().select_related("organization").get(pk=payment_id)
    refund = None
    if refund_id is not None:
        refund = Refund.objects.filter(payment=payment, pk=refund_id).first()
    if refund is None:
        refund = Refund.objects.filter(payment=payment, provider_id=provider_id).first()
    if refund is None:
        refund = Refund.objects.create(
            payment=payment,
            amount=amount,
            reason="Refunded at the payment provider",
            idempotency_key=f"refund-seen:{payment.provider}:{provider_id}",
            provider_id=provider_id,
            created_by=payment.provider,
        )
    if refund.status == "succeeded":
        return False
    refund.status, refund.provider_id = "succeeded", provider_id
    refund.save(update_fields=["status", "provider_id"])
    payment.refunded_amount = min(payment.amount, payment.refunded_amount + refund.amount)
    payment.updated_at = timezone.now()
    payment.save(update_fields=["refunded_amount", "updated_at"])
    if payment.purpose != PaymentPurpose.INVOICE:
        ledger_post(
            organization=payment.organization,
            kind=EntryKind.REFUND,
            amount=-refund.amount,
            idempotency_key=f"refund:{payment.provider}:{provider_id}",
            description=f"Refund of {payment.get_purpose_display().lower()} {payment.pk}",
            actor_label=refund.created_by,
            reference=provider_id,
            payment=payment,
        )
    return True


# --- Invoices of invoiced organisations ------------------------------------------------------


def invoice_charge(invoice_id: int) -> Payment | None:
    """Charge a finalized invoice to the organisation's saved card, off-session, once (key
    ``invoice:<id>``). Without a card the invoice waits for a bank transfer quoting its payment
    reference. The invoice is marked paid when the charge succeeds."""
    from billing.models import Invoice

    invoice = Invoice.objects.select_related("organization").get(pk=invoice_id)
    if (
        invoice.kind != "invoice"
        or invoice.status != "finalized"
        or invoice.billing_mode != "invoiced"
        or invoice.amount_due <= 0
    ):
        return None
    return charge_saved_card(
        organization=invoice.organization,
        purpose=PaymentPurpose.INVOICE,
        amount=invoice.amount_due,
        idempotency_key=f"invoice:{invoice.pk}",
        created_by=f"invoice {invoice.number}",
        invoice=invoice,
    )
