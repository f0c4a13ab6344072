"""Wallet top-ups: Alipay and WeChat Pay, one-off payments shown as a QR code.

The flow, the same for both wallets (``billing.payments.alipay_provider``,
``billing.payments.wechat_provider``):

1. ``wallet_top_up_start`` commits the ``Payment`` (its idempotency key, and the portal's
   reference sent as ``out_trade_no``, kept in ``checkout_id``) *before* asking the wallet for a
   QR code; the answer is stored on the payment (``qr_payload``, and for Alipay ``pay_url``).
2. The customer scans or pays on Alipay's page. The portal learns of the payment only from a
   verified notification (``notification_receive``) or from its own query of the trade
   (``payment_refresh``, asked by the payment page's poll and by the ``wallets_reconcile``
   beat task) — never from the browser coming back.
3. Both go through ``trade_succeeded``: the amount and currency must be the payment's, else
   nothing is credited and the payment is flagged for staff; otherwise
   ``services.payment_succeeded`` credits it once (ledger key ``payment:<id>``).

Each notification is stored once (``WebhookEvent``, unique per wallet and notification id) in
the same transaction as its effect, so a duplicate delivery or a replay changes nothing. A
notification for an order the portal cannot find is refused (the wallet delivers it again
later) and stores nothing.
"""

from __future__ import annotations

import logging
import uuid
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.errors import BillingErrorCode
from billing.models import Payment, PaymentPurpose, PaymentStatus, Refund, WebhookEvent
from billing.payments import provider as payment_provider
from billing.payments import services
from billing.payments.base import (
    CardDetails,
    ChargeResult,
    PaymentProvider,
    PaymentProviderError,
    ProviderEvent,
    Redirect,
    WebhookSignatureInvalid,
)
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.errors import InvalidInput, NotFound
from portal.observability.metrics import webhook_observed

log = logging.getLogger(__name__)

CARD = "card"
WALLETS = ("alipay", "wechatpay")
# The payment page asks the wallet at most this often while it polls.
QUERY_MIN_INTERVAL_SECONDS = 5


# --- What a wallet provider answers ----------------------------------------------------------


@dataclass(frozen=True)
class TradeCreated:
    qr_payload: str
    pay_url: str = ""
    trade_id: str = ""


@dataclass(frozen=True)
class TradeState:
    """A trade as the wallet's query tells it. ``status``: succeeded, pending or closed."""

    status: str
    trade_id: str = ""
    amount: Decimal | None = None
    currency: str = ""


@dataclass(frozen=True)
class WalletNotice:
    """A verified notification. ``kind`` is ``trade`` (``status`` as in ``TradeState``) or
    ``refund`` (``refund_id``/``out_refund_no``, ``amount`` refunded)."""

    event_id: str
    type: str
    out_trade_no: str
    kind: str = "trade"
    status: str = ""
    trade_id: str = ""
    amount: Decimal | None = None
    currency: str = ""
    refund_id: str = ""
    out_refund_no: str = ""
    payload: dict = field(default_factory=dict)


class WalletProvider(PaymentProvider):
    """A wallet: one-off top-ups by QR code. It cannot save a method or charge off-session."""

    name: str
    label = ""

    @abstractmethod
    def configured(self) -> bool:
        """Its ids and keys are set."""

    @abstractmethod
    def currencies(self) -> list[str]: ...

    def enabled_for(self, currency: str) -> bool:
        return self.configured() and currency in self.currencies()

    @abstractmethod
    def trade_create(self, payment: Payment) -> TradeCreated: ...

    @abstractmethod
    def trade_query(self, payment: Payment) -> TradeState: ...

    @abstractmethod
    def trade_close(self, payment: Payment) -> None:
        """Close an unpaid trade at the wallet (best effort: the QR code stops working)."""

    @abstractmethod
    def notification(
        self, body: bytes, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> WalletNotice:
        """Verify and parse one notification; ``WebhookSignatureInvalid`` if it is not the
        wallet's (bad signature, another merchant, too old)."""

    # Not wallets' business: a wallet has no customer, saved method or hosted card checkout.
    def _unsupported(self):
        raise PaymentProviderError(
            _("%(wallet)s pays one top-up at a time; it cannot save a payment method.")
            % {"wallet": self.label},
            code=BillingErrorCode.WALLET_NOT_SUPPORTED,
        )

    def customer_ensure(self, organization) -> str:
        self._unsupported()

    def checkout_start(self, payment, *, success_url: str, cancel_url: str) -> Redirect:
        self._unsupported()

    def setup_start(self, organization, *, success_url: str, cancel_url: str) -> Redirect:
        self._unsupported()

    def card_details(self, payment_method_id: str) -> CardDetails:
        self._unsupported()

    def charge_off_session(self, payment, payment_method) -> ChargeResult:
        self._unsupported()

    def webhook_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        raise WebhookSignatureInvalid(
            _("Wallet notifications arrive at their own endpoint."),
            code=BillingErrorCode.SIGNATURE_INVALID,
        )


def wallet(name: str) -> WalletProvider:
    provider = payment_provider(name)
    if not isinstance(provider, WalletProvider):
        raise LookupError(f"'{name}' is not a wallet.")
    return provider


def is_wallet_payment(payment: Payment) -> bool:
    return payment.provider in WALLETS


# --- Choosing how to pay -------------------------------------------------------------------


@dataclass(frozen=True)
class PayMethod:
    value: str
    label: str


def pay_methods(currency: str) -> list[PayMethod]:
    """The ways to top up in ``currency``: the card provider, then each wallet enabled for it."""
    methods = [PayMethod(CARD, str(gettext_lazy("Card")))]
    for name in WALLETS:
        provider = wallet(name)
        if provider.enabled_for(currency):
            methods.append(PayMethod(name, str(provider.label)))
    return methods


def method_check(method: str, currency: str) -> str:
    method = (method or CARD).strip().lower()
    if method not in {m.value for m in pay_methods(currency)}:
        message = _("%(method)s is not available for payments in %(currency)s.") % {
            "method": method,
            "currency": currency,
        }
        raise InvalidInput(
            message,
            code=BillingErrorCode.PAYMENT_METHOD_UNAVAILABLE,
            details={
                "method": message,
                "available": [m.value for m in pay_methods(currency)],
            },
        )
    return method


def reference_for(idempotency_key: str) -> str:
    """The portal's payment reference, sent as ``out_trade_no``: 32 letters and digits, which
    both wallets accept (WeChat Pay: 6 to 32 characters)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex


# --- Starting a top-up ----------------------------------------------------------------------


def wallet_top_up_start(*, actor: Actor, amount, method: str) -> Payment:
    """Create a pending wallet top-up, then ask the wallet for its QR code.

    The payment and its key are committed first, so a crash during the call leaves a pending
    payment that the reconcile task settles (by query) or expires."""
    actor = authorize(actor, Action.BILLING_MANAGE)
    organization = actor.organization
    method = method_check(method, organization.currency)
    if method == CARD:
        raise InvalidInput(
            _("Cards pay on the card provider's page."), code=BillingErrorCode.STATUS_INVALID
        )
    amount = services._top_up_amount(amount, organization.currency)
    provider = wallet(method)
    key = f"top-up:{uuid.uuid4()}"
    now = timezone.now()
    with transaction.atomic(durable=True):
        payment = Payment.objects.create(
            organization=organization,
            purpose=PaymentPurpose.TOP_UP,
            amount=amount,
            currency=organization.currency,
            provider=provider.name,
            idempotency_key=key,
            checkout_id=reference_for(key),
            created_by=actor.label,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(minutes=settings.WALLET_PAYMENT_EXPIRE_MINUTES),
        )
        audit_record(
            actor=actor,
            action="payment.top_up_started",
            target=payment,
            details={"amount": str(amount), "currency": payment.currency, "method": method},
        )
    try:
        created = provider.trade_create(payment)
    except PaymentProviderError as exc:
        services._payment_update(payment, status=PaymentStatus.FAILED, failure_message=exc.message)
        raise
    fields = {"qr_payload": created.qr_payload, "pay_url": created.pay_url}
    if created.trade_id:
        fields["payment_intent_id"] = created.trade_id
    services._payment_update(payment, **fields)
    return payment


def wallet_payment_for(organization, payment_id: int) -> Payment:
    payment = Payment.objects.filter(
        organization=organization, pk=payment_id, provider__in=WALLETS
    ).first()
    if payment is None:
        raise NotFound(
            _("No such payment in this organisation."), code=BillingErrorCode.PAYMENT_UNKNOWN
        )
    return payment


# --- The trade succeeded (notification or query) --------------------------------------------


def _flag(payment: Payment, reason: str, *, source: str, details: dict) -> Payment:
    log.warning("wallet payment %s not credited: %s (%s)", payment.pk, reason, details)
    with transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(
            flag_reason=reason[:300], updated_at=timezone.now()
        )
        audit_record(
            actor=Actor.system(),
            action="payment.wallet_mismatch",
            target=payment,
            organization=payment.organization,
            details={"reason": reason, "source": source, **details},
        )
    payment.refresh_from_db()
    return payment


def trade_succeeded(
    payment: Payment, *, trade_id: str, amount: Decimal | None, currency: str, source: str
) -> Payment:
    """The wallet says the trade is paid. Credit it once, if it is for the payment's exact
    amount and currency; otherwise flag the payment and credit nothing."""
    details = {"amount": str(amount), "currency": currency, "trade_id": trade_id}
    if amount is None or Decimal(amount) != payment.amount:
        return _flag(
            payment,
            f"The wallet reports {amount} {currency}, the payment is {payment.amount} "
            f"{payment.currency}.",
            source=source,
            details=details,
        )
    if (currency or "").upper() != payment.currency:
        return _flag(
            payment,
            f"The wallet reports the currency {currency}, the payment is in {payment.currency}.",
            source=source,
            details=details,
        )
    return services.payment_succeeded(payment.pk, payment_intent_id=trade_id)


def _apply_state(payment: Payment, state: TradeState, *, source: str) -> Payment:
    if state.status == PaymentStatus.SUCCEEDED:
        return trade_succeeded(
            payment,
            trade_id=state.trade_id,
            amount=state.amount,
            currency=state.currency,
            source=source,
        )
    if state.status == "closed":
        return services.payment_canceled(payment.pk, message="The wallet closed the trade unpaid.")
    return payment


# --- Notifications ------------------------------------------------------------------------


class PaymentUnknown(NotFound):
    """A verified notification for an order the portal does not have (yet)."""

    code = BillingErrorCode.PAYMENT_UNKNOWN


def _apply_notice(payment: Payment, notice: WalletNotice) -> str:
    if notice.kind == "refund":
        refund = Refund.objects.filter(payment=payment, provider_id=notice.refund_id).first()
        if refund is None and notice.out_refund_no:
            refund = next(
                (
                    r
                    for r in payment.refunds.all()
                    if reference_for(r.idempotency_key) == notice.out_refund_no
                ),
                None,
            )
        if notice.status != PaymentStatus.SUCCEEDED or notice.amount is None:
            return f"refund {notice.refund_id} {notice.status or 'not final'}"
        new = services.refund_recorded(
            payment_id=payment.pk,
            provider_id=notice.refund_id,
            amount=notice.amount,
            refund_id=refund.pk if refund else None,
        )
        return f"refund {notice.refund_id} {'recorded' if new else 'already recorded'}"
    state = TradeState(notice.status, notice.trade_id, notice.amount, notice.currency)
    payment = _apply_state(payment, state, source="notification")
    if payment.flag_reason and payment.status != PaymentStatus.SUCCEEDED:
        return f"payment {payment.pk} flagged: {payment.flag_reason}"
    return f"payment {payment.pk} {payment.status}"


def notification_receive(
    provider_name: str, body: bytes, headers: Mapping[str, str], form: Mapping[str, str]
) -> tuple[str, bool]:
    """Verify one wallet notification, store it once and apply it in the same transaction.

    Returns (outcome, created). ``WebhookSignatureInvalid`` for a forged or foreign one,
    ``PaymentUnknown`` for an order not found (nothing is stored: the wallet retries)."""
    provider = wallet(provider_name)
    try:
        notice = provider.notification(body, headers, form)
    except WebhookSignatureInvalid:
        webhook_observed(provider=provider_name, outcome="bad_signature")
        log.warning("%s notification refused: bad signature", provider_name)
        raise
    payment = Payment.objects.filter(
        provider=provider_name, checkout_id=notice.out_trade_no
    ).first()
    if payment is None:
        log.warning("%s notification for unknown order %s", provider_name, notice.out_trade_no)
        webhook_observed(provider=provider_name, outcome="failed")  # retried by the wallet
        raise PaymentUnknown(_("No payment has this order number."))
    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                provider=provider_name,
                event_id=notice.event_id,
                type=notice.type,
                payload=notice.payload,
            )
            outcome = _apply_notice(payment, notice)
            event.processed_at = timezone.now()
            event.outcome = outcome[:300]
            event.attempts = 1
            event.save(update_fields=["processed_at", "outcome", "attempts"])
    except IntegrityError:
        webhook_observed(provider=provider_name, outcome="duplicate")
        return "duplicate", False
    webhook_observed(provider=provider_name, outcome="processed")
    return outcome, True


# --- Asking the wallet (the payment page's poll, the reconcile task) ------------------------


def payment_refresh(payment: Payment, *, force: bool = False, now=None) -> Payment:
    """Ask the wallet about a pending payment that has waited a while (a notification may be
    lost), at most every few seconds. Settles it through ``trade_succeeded`` when paid."""
    now = now or timezone.now()
    if not is_wallet_payment(payment) or payment.status != PaymentStatus.PENDING:
        return payment
    if payment.flag_reason:
        return payment  # staff look at it; asking again would not change the answer
    if not force:
        if payment.created_at > now - timedelta(seconds=settings.WALLET_QUERY_AFTER_SECONDS):
            return payment
        if payment.queried_at and payment.queried_at > now - timedelta(
            seconds=QUERY_MIN_INTERVAL_SECONDS
        ):
            return payment
    services._payment_update(payment, queried_at=now)
    try:
        state = wallet(payment.provider).trade_query(payment)
    except PaymentProviderError as exc:
        log.warning("query of %s payment %s failed: %s", payment.provider, payment.pk, exc.message)
        return payment
    return _apply_state(payment, state, source="query")


def wallets_reconcile(now=None) -> dict[str, int]:
    """Settle pending wallet payments older than ``WALLET_RECONCILE_AFTER_SECONDS`` by asking
    the wallet, and close those past their expiry that are still unpaid."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WALLET_RECONCILE_AFTER_SECONDS)
    pending = Payment.objects.filter(
        provider__in=WALLETS, status=PaymentStatus.PENDING, flag_reason="", created_at__lt=cutoff
    ).order_by("created_at")[:500]
    counts = {"succeeded": 0, "expired": 0, "pending": 0}
    for payment in pending:
        payment = payment_refresh(payment, force=True, now=now)
        if payment.status == PaymentStatus.SUCCEEDED:
            counts["succeeded"] += 1
            continue
        if (
            payment.status == PaymentStatus.PENDING
            and payment.expires_at
            and payment.expires_at < now
        ):
            try:
                wallet(payment.provider).trade_close(payment)
            except PaymentProviderError as exc:
                log.warning("closing %s payment %s failed: %s", payment.provider, payment.pk, exc)
            payment = services.payment_canceled(
                payment.pk, message="The QR code expired before it was paid."
            )
            counts["expired"] += payment.status == PaymentStatus.CANCELED
            continue
        counts["pending"] += payment.status == PaymentStatus.PENDING
    return counts


def payment_settled(payment: Payment) -> bool:
    return payment.status != PaymentStatus.PENDING or bool(payment.flag_reason)


# --- System check ---------------------------------------------------------------------------

WALLET_SETTINGS = {
    "alipay": ("ALIPAY_APP_ID", "ALIPAY_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY"),
    "wechatpay": (
        "WECHATPAY_MCH_ID",
        "WECHATPAY_APP_ID",
        "WECHATPAY_PRIVATE_KEY",
        "WECHATPAY_CERT_SERIAL_NO",
        "WECHATPAY_APIV3_KEY",
        "WECHATPAY_PUBLIC_KEY",
    ),
}


def wallet_settings_check(app_configs=None, **kwargs) -> list:
    """A wallet is either off (none of its settings) or whole, with keys that load: a typo in
    a key fails at start, not at a customer's first top-up. Loading the keys calls no one."""
    from django.core.checks import Error

    errors = []
    for name, names in WALLET_SETTINGS.items():
        given = [setting for setting in names if getattr(settings, setting, "")]
        if not given:
            continue
        missing = [setting for setting in names if setting not in given]
        if missing:
            errors.append(
                Error(
                    f"{name} is partly configured: set {', '.join(missing)} too, or none of "
                    f"{', '.join(given)}.",
                    id="billing.E101",
                )
            )
            continue
        if name == "wechatpay" and len(settings.WECHATPAY_APIV3_KEY) != 32:
            errors.append(Error("WECHATPAY_APIV3_KEY must be 32 characters.", id="billing.E102"))
        try:
            provider = wallet(name)
            if not provider.configured():
                raise ValueError("WECHATPAY_PUBLIC_KEY_ID is missing (or give a certificate).")
            provider.client()
        except Exception as exc:  # whatever the SDK raises for an unreadable key
            errors.append(Error(f"The {name} keys do not load: {exc}", id="billing.E102"))
    return errors


def wallet_payments_open(organization, now=None) -> list[Payment]:
    """The organisation's wallet top-ups still waiting to be paid (their QR code still works)."""
    now = now or timezone.now()
    return list(
        Payment.objects.filter(
            organization=organization,
            provider__in=WALLETS,
            status=PaymentStatus.PENDING,
            flag_reason="",
            expires_at__gt=now,
        ).order_by("-created_at")[:3]
    )
