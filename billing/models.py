"""The credits ledger: an append-only list of money movements per organisation.

Every entry has a unique idempotency key, so a retried top-up, grant or debit is recorded once;
a usage record is debited at most once (unique). The balance is the sum of the entries; the
``Account`` keeps it cached, updated under its row lock in the same transaction as the entry.
Entries are never edited or deleted: corrections are new entries.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Round
from django.db.models.lookups import Exact
from django.utils import timezone
from django.utils.translation import gettext_lazy
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import Currency, Organization
from portal.metering.models import UsageRecord
from portal.money import MINOR_UNITS, RATING_PLACES

# Ledger amounts keep full precision (usage is rated per second); invoices round once per line.
AMOUNT_MAX_DIGITS = 28
AMOUNT_DECIMAL_PLACES = RATING_PLACES  # 12


class EntryKind(models.TextChoices):
    TOP_UP = "top_up", _("Top-up")
    GRANT = "grant", _("Grant")
    USAGE = "usage", _("Usage")
    REFUND = "refund", _("Refund")
    ADJUSTMENT = "adjustment", _("Adjustment")
    ROUNDING = "rounding", _("Rounding")
    PAYMENT = "payment", _("Invoice payment")
    TAX = "tax", _("Tax")


class Account(models.Model):
    """An organisation's ledger head: its currency and cached balance."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, related_name="ledger_account"
    )
    currency = models.CharField(max_length=3, choices=Currency.choices)
    balance = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, default=0
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(currency__in=Currency.values), name="billing_account_currency_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.balance} {self.currency}"


class BurnFigure(models.Model):
    """What an organisation owes for usage not debited yet, and what it is billed per hour now,
    kept up to date by every change that starts or stops billing (``billing.ledger.burn``), so
    a launch's credit check reads one row instead of replaying its fleet's lifecycle.

    ``undebited`` is the usage owed and not debited as of ``as_of`` (never less than the
    truth); from then on it grows by ``running_per_hour`` and ``billed_gb`` of storage. The
    ``committed_*`` fields are the committed burn (instances running or on their way, what is
    stored). ``reconciled_at`` is when it was last recomputed in full from the lifecycle and the
    records (``billing.ledger.burn.burn_reconcile``); ``version`` moves with every write (a reconciliation made without the
    organisation's lock is kept only if nothing moved meanwhile)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="burn_figure"
    )
    currency = models.CharField(max_length=3, choices=Currency.choices)
    undebited = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, default=0
    )
    as_of = models.DateTimeField(default=timezone.now)
    running_per_hour = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, default=0
    )
    billed_gb = models.BigIntegerField(default=0)
    committed_per_hour = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, default=0
    )
    committed_gb = models.BigIntegerField(default=0)
    reconciled_at = models.DateTimeField(default=timezone.now)
    # What the last reconciliation took into account: the newest price rows of the currency
    # (compute and meters), the next moment one of them takes effect, and usage events received
    # from ``events_from`` on (a check reconciles again when any of these moved).
    prices_seen_id = models.BigIntegerField(default=0)
    meter_prices_seen_id = models.BigIntegerField(default=0)
    prices_until = models.DateTimeField(null=True, blank=True)
    events_from = models.DateTimeField(default=timezone.now)
    version = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(currency__in=Currency.values), name="billing_burn_currency_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.undebited} {self.currency} not debited"


class LedgerEntry(models.Model):
    """One money movement. Positive amounts add credit, negative ones use it."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=12, choices=EntryKind.choices)
    amount = models.DecimalField(max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES)
    currency = models.CharField(max_length=3, choices=Currency.choices)
    idempotency_key = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=300)
    actor_label = models.CharField(max_length=200)
    usage_record = models.OneToOneField(
        UsageRecord, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entry"
    )
    reference = models.CharField(max_length=120, blank=True, help_text=_("e.g. a payment id."))
    payment = models.ForeignKey(
        "Payment", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    invoice = models.ForeignKey(
        "Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=EntryKind.values), name="billing_entry_kind_valid"
            ),
            models.CheckConstraint(condition=~Q(amount=0), name="billing_entry_not_zero"),
            models.CheckConstraint(
                condition=Q(kind="usage", amount__lt=0) | ~Q(kind="usage"),
                name="billing_usage_is_a_debit",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["top_up", "grant", "payment"], amount__gt=0)
                | ~Q(kind__in=["top_up", "grant", "payment"]),
                name="billing_credit_is_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at"], name="billing_entry_account_time")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} {self.currency}"


class UsageRating(models.Model):
    """A usage record, priced: exactly one per record, with its ledger debit when it cost something."""

    usage_record = models.OneToOneField(
        UsageRecord, on_delete=models.PROTECT, related_name="rating"
    )
    amount = models.DecimalField(max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES)
    currency = models.CharField(max_length=3, choices=Currency.choices)
    entry = models.OneToOneField(
        LedgerEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    rated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="billing_rating_not_negative"),
        ]

    def __str__(self) -> str:
        return f"record {self.usage_record_id}: {self.amount} {self.currency}"


# --- Payments -------------------------------------------------------------------------------

MONEY_MAX_DIGITS = 18
# what a payment provider or an invoice carries: the largest minor unit (2, cents and fen)
MONEY_DECIMAL_PLACES = max(MINOR_UNITS.values())


class TaxStatus(models.TextChoices):
    STANDARD = "standard", _("Standard rate")
    REVERSE_CHARGE = "reverse_charge", _("Reverse charge")
    ZERO_RATED = "zero_rated", _("Zero-rated")
    NOT_SUBJECT = "not_subject", _("Not subject to tax")


class SpendLimitMode(models.TextChoices):
    """What reaching the monthly spend limit does."""

    ALERT = "alert", _("Alert only")
    BLOCK = "block", _("Block new launches")
    STOP = "stop", _("Stop running instances")


class BillingProfile(models.Model):
    """How an organisation pays and what it lets itself spend: one per organisation."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_profile"
    )
    provider = models.CharField(max_length=20, blank=True, help_text=_("Payment provider in use."))
    customer_id = models.CharField(
        max_length=120, blank=True, help_text=_("The provider's customer id (e.g. cus_...).")
    )
    auto_recharge_enabled = models.BooleanField(default=False)
    auto_recharge_threshold = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, null=True, blank=True
    )
    auto_recharge_amount = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, null=True, blank=True
    )
    monthly_spend_limit = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, null=True, blank=True
    )
    spend_limit_mode = models.CharField(
        max_length=8, choices=SpendLimitMode.choices, default=SpendLimitMode.BLOCK
    )
    credit_limit = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS,
        decimal_places=MONEY_DECIMAL_PLACES,
        null=True,
        blank=True,
        help_text=_(
            "Granted by finance with monthly invoicing: the most the organisation may owe "
            "(unpaid invoices, usage not invoiced yet, and the reserve window's burn)."
        ),
    )
    tax_status = models.CharField(
        max_length=16, choices=TaxStatus.choices, default=TaxStatus.STANDARD
    )
    tax_rate = models.DecimalField(
        max_digits=5, decimal_places=4, default=0, help_text=_("0.2000 is 20 %.")
    )
    payment_terms_days = models.PositiveSmallIntegerField(default=30)
    balance_exhausted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("When a prepaid balance last reached zero (grace clock)."),
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(tax_rate__gte=0, tax_rate__lt=1), name="billing_profile_tax_rate_range"
            ),
            models.CheckConstraint(
                condition=Q(monthly_spend_limit__isnull=True) | Q(monthly_spend_limit__gt=0),
                name="billing_profile_limit_positive",
            ),
            models.CheckConstraint(
                condition=Q(credit_limit__isnull=True) | Q(credit_limit__gte=0),
                name="billing_profile_credit_limit_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"Billing profile of {self.organization}"


class PaymentMethod(models.Model):
    """A saved card, as the provider describes it (never the number)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="payment_methods"
    )
    provider = models.CharField(max_length=20)
    provider_id = models.CharField(max_length=120)
    brand = models.CharField(max_length=20)
    last4 = models.CharField(max_length=4)
    exp_month = models.PositiveSmallIntegerField()
    exp_year = models.PositiveSmallIntegerField()
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-is_default", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_id"], name="billing_payment_method_unique"
            ),
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(is_default=True, removed_at__isnull=True),
                name="billing_one_default_payment_method",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.brand} •••• {self.last4}"


class PaymentPurpose(models.TextChoices):
    TOP_UP = "top_up", _("Top-up")
    AUTO_RECHARGE = "auto_recharge", _("Auto-recharge")
    INVOICE = "invoice", _("Invoice payment")
    BANK_TRANSFER = "bank_transfer", _("Bank transfer")


class PaymentStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    REQUIRES_ACTION = "requires_action", _("Needs authentication")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELED = "canceled", _("Canceled")


class Payment(models.Model):
    """Money asked of a payment provider. The idempotency key is stored before the first call,
    so a retry after a crash asks the provider for the same payment, never a second one."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="payments"
    )
    purpose = models.CharField(max_length=16, choices=PaymentPurpose.choices)
    invoice = models.ForeignKey(
        "Invoice", null=True, blank=True, on_delete=models.PROTECT, related_name="payments"
    )
    amount = models.DecimalField(max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES)
    currency = models.CharField(max_length=3, choices=Currency.choices)
    status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    provider = models.CharField(max_length=20)
    idempotency_key = models.CharField(max_length=120, unique=True)
    checkout_id = models.CharField(
        max_length=255, blank=True, help_text=_("e.g. cs_... (Checkout)")
    )
    payment_intent_id = models.CharField(max_length=255, blank=True, help_text=_("e.g. pi_..."))
    payment_method = models.ForeignKey(
        PaymentMethod, null=True, blank=True, on_delete=models.SET_NULL, related_name="payments"
    )
    refunded_amount = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    failure_message = models.CharField(max_length=300, blank=True)
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    # Wallet payments (Alipay, WeChat Pay): ``checkout_id`` holds the portal's reference sent as
    # out_trade_no, ``payment_intent_id`` the wallet's trade id once it is known.
    qr_payload = models.TextField(
        blank=True,
        help_text=gettext_lazy("What the customer scans (Alipay qr_code, WeChat Pay code_url)."),
    )
    pay_url = models.TextField(
        blank=True, help_text=gettext_lazy("Alipay's hosted page for this payment.")
    )
    flag_reason = models.CharField(
        max_length=300,
        blank=True,
        help_text=gettext_lazy("Why a notification or query was not credited."),
    )
    queried_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_payment_positive"),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0, refunded_amount__lte=models.F("amount")),
                name="billing_payment_refund_within_amount",
            ),
            models.UniqueConstraint(
                fields=["provider", "checkout_id"],
                condition=~Q(checkout_id=""),
                name="billing_payment_checkout_unique",
            ),
            models.UniqueConstraint(
                fields=["provider", "payment_intent_id"],
                condition=~Q(payment_intent_id=""),
                name="billing_payment_intent_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_purpose_display()} {self.amount} {self.currency} ({self.status})"

    @property
    def provider_trade_id(self) -> str:
        """The provider's id of the trade (Stripe payment intent, Alipay trade_no, WeChat Pay
        transaction_id)."""
        return self.payment_intent_id


class Refund(models.Model):
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES)
    reason = models.CharField(max_length=300)
    idempotency_key = models.CharField(max_length=120, unique=True)
    provider_id = models.CharField(max_length=255, blank=True, help_text=_("e.g. re_..."))
    status = models.CharField(max_length=16, default="pending")
    created_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_refund_positive"),
        ]

    def __str__(self) -> str:
        return f"Refund {self.amount} of payment {self.payment_id}"


class WebhookEvent(models.Model):
    """A provider's event, stored as received (its id unique per provider) and processed by a
    task; ``processed_at`` is set in the same transaction as the event's effect."""

    provider = models.CharField(max_length=20)
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="billing_webhook_once"),
        ]
        indexes = [
            models.Index(
                fields=["received_at"],
                condition=Q(processed_at__isnull=True),
                name="billing_webhook_unprocessed",
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id}"


# --- Spend controls -------------------------------------------------------------------------


class AlertKind(models.TextChoices):
    LOW_BALANCE_24H = "low_balance_24h", _("Less than 24 hours of credit left")
    LOW_BALANCE_1H = "low_balance_1h", _("Less than 1 hour of credit left")
    BALANCE_EXHAUSTED = "balance_exhausted", _("Credit exhausted")
    INSTANCES_STOPPED = "instances_stopped", _("Instances stopped for lack of credit")
    SPEND_LIMIT_50 = "spend_limit_50", _("50 % of the monthly spend limit")
    SPEND_LIMIT_80 = "spend_limit_80", _("80 % of the monthly spend limit")
    SPEND_LIMIT = "spend_limit", _("Monthly spend limit reached")
    CREDIT_LIMIT_80 = "credit_limit_80", _("80 % of the credit limit")
    CREDIT_LIMIT = "credit_limit", _("Credit limit reached")
    AUTO_RECHARGE_FAILED = "auto_recharge_failed", _("Auto-recharge failed")


class SpendAlert(models.Model):
    """One notice sent, once per organisation, kind and period (e.g. since the last top-up)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="spend_alerts"
    )
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    period = models.CharField(max_length=40)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "kind", "period"], name="billing_alert_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.kind} ({self.period})"


# --- Credit terms (monthly invoicing) ---------------------------------------------------------


class CreditRequestStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    GRANTED = "granted", _("Granted")
    DECLINED = "declined", _("Declined")
    WITHDRAWN = "withdrawn", _("Withdrawn")


class CreditRequest(models.Model):
    """A customer's request to be invoiced monthly; finance grants or declines it in admin."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="credit_requests"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    company_name = models.CharField(max_length=200)
    registration_number = models.CharField(
        max_length=64, help_text=_("Company registration or unified social credit code.")
    )
    address = models.CharField(max_length=500)
    contact_name = models.CharField(max_length=120)
    contact_email = models.EmailField()
    contact_phone = models.CharField(max_length=40, blank=True)
    expected_monthly_spend = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES
    )
    currency = models.CharField(max_length=3, choices=Currency.choices)
    note = models.CharField(max_length=1000, blank=True)
    status = models.CharField(
        max_length=10, choices=CreditRequestStatus.choices, default=CreditRequestStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_note = models.CharField(max_length=500, blank=True)
    granted_limit = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, null=True, blank=True
    )
    granted_terms_days = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("grant_credit", "Can grant, change and revoke credit terms")]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(status="pending"),
                name="billing_one_pending_credit_request",
            ),
            models.CheckConstraint(
                condition=Q(expected_monthly_spend__gt=0), name="billing_credit_request_spend"
            ),
        ]

    def __str__(self) -> str:
        return f"Monthly invoicing for {self.organization} ({self.get_status_display()})"


# --- Invoices -------------------------------------------------------------------------------


class InvoiceKind(models.TextChoices):
    INVOICE = "invoice", _("Invoice")
    CREDIT_NOTE = "credit_note", _("Credit note")


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    FINALIZED = "finalized", _("Finalized")
    PAID = "paid", _("Paid")
    VOID = "void", _("Void")


class Invoice(models.Model):
    """A monthly invoice (or a credit note correcting one). Finalizing gives it the next number
    of a gapless yearly series and freezes it and its lines; the database refuses changes to a
    frozen invoice's amounts and lines (triggers), not only the forms."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    kind = models.CharField(max_length=12, choices=InvoiceKind.choices, default=InvoiceKind.INVOICE)
    corrects = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="credit_notes"
    )
    period_start = models.DateField(help_text=_("First day of the month (UTC)."))
    period_end = models.DateField(help_text=_("First day of the next month (exclusive)."))
    currency = models.CharField(max_length=3, choices=Currency.choices)
    billing_mode = models.CharField(max_length=10)
    status = models.CharField(
        max_length=10, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT
    )
    number = models.CharField(max_length=30, null=True, blank=True, unique=True)
    tax_status = models.CharField(max_length=16, choices=TaxStatus.choices)
    tax_rate = models.DecimalField(max_digits=5, decimal_places=4, default=0)
    subtotal = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    tax = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    total = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    credits_applied = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    amount_due = models.DecimalField(
        max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, default=0
    )
    payment_reference = models.CharField(
        max_length=40, blank=True, help_text=_("Quote this on a bank transfer.")
    )
    paid_reference = models.CharField(
        max_length=120, blank=True, help_text=_("How it was paid (bank reference, payment id).")
    )
    seller = models.JSONField(default=dict, blank=True)
    buyer = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=300, blank=True)
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    pdf = models.BinaryField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"],
                condition=Q(kind="invoice"),
                name="billing_one_invoice_per_month",
            ),
            models.CheckConstraint(
                condition=Q(kind="invoice", corrects__isnull=True)
                | Q(kind="credit_note", corrects__isnull=False),
                name="billing_credit_note_corrects_invoice",
            ),
            models.CheckConstraint(
                condition=Q(status="draft", number__isnull=True)
                | (~Q(status="draft") & Q(number__isnull=False)),
                name="billing_number_iff_finalized",
            ),
            # Compared in cents: SQLite keeps decimals as floating point (0.67 + 0.02 there is
            # not 0.69), PostgreSQL exactly; both hold amounts of two places.
            models.CheckConstraint(
                condition=Exact(
                    Round(models.F("total") * 100),
                    Round(models.F("subtotal") * 100) + Round(models.F("tax") * 100),
                ),
                name="billing_invoice_total_is_subtotal_plus_tax",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "period_start"], name="billing_invoice_status_month"),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft {self.get_kind_display().lower()} {self.period_start:%Y-%m}"


class LineKind(models.TextChoices):
    COMPUTE = "compute", _("Compute")
    STORAGE = "storage", _("Storage")
    METER = "meter", _("Other usage")
    CREDIT = "credit", _("Credit")
    ADJUSTMENT = "adjustment", _("Adjustment")


class InvoiceLine(models.Model):
    """One line: usage of one kind (an instance type in a region, storage, a meter) in the month.
    ``amount`` is the line's exact cost rounded once, to the currency's minor unit, half-up."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=LineKind.choices)
    description = models.CharField(max_length=300)
    meter_key = models.CharField(max_length=100, blank=True)
    instance_type_id = models.BigIntegerField(null=True, blank=True)
    region_id = models.BigIntegerField(null=True, blank=True)
    quantity = models.DecimalField(max_digits=24, decimal_places=6)
    unit = models.CharField(max_length=20)
    unit_price = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, null=True, blank=True
    )
    exact_amount = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES
    )
    amount = models.DecimalField(max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="billing_line_position"),
        ]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class DocumentSequence(models.Model):
    """The last number used in one yearly series (``INV`` or ``CN``), locked while finalizing so
    numbers are gapless and never reused."""

    series = models.CharField(max_length=8)
    year = models.PositiveSmallIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "year"], name="billing_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.series}-{self.year}: {self.last}"


class ExportKind(models.TextChoices):
    REGISTER = "register", _("Invoice register")
    LINES = "lines", _("Invoice lines")
    JOURNAL = "journal", _("Accounting journal")
    RECONCILIATION = "reconciliation", _("Payment reconciliation")
    DOCUMENTS = "documents", _("Invoice PDFs and e-invoices")


class ExportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    XLSX = "xlsx", _("Excel (XLSX)")
    ZIP = "zip", _("ZIP (documents only)")


class ExportStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class ExportJob(models.Model):
    """A finance export run in the background (``billing.finance.services``): ``params`` is the filter
    it was asked for; the finished file is kept in ``content`` (the portal has no media
    storage) until it is downloaded or cleaned up."""

    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.CASCADE, related_name="export_jobs"
    )
    kind = models.CharField(max_length=16, choices=ExportKind.choices)
    format = models.CharField(max_length=4, choices=ExportFormat.choices)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=8, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    progress = models.PositiveSmallIntegerField(default=0)
    rows = models.PositiveIntegerField(default=0)
    filename = models.CharField(max_length=120, blank=True)
    content = models.BinaryField(null=True, blank=True, editable=False)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True, help_text=_("When a worker took it."))
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=ExportKind.values), name="billing_exportjob_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(format__in=ExportFormat.values), name="billing_exportjob_format_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind="documents", format="zip")
                | (~Q(kind="documents") & ~Q(format="zip")),
                name="billing_exportjob_zip_is_documents",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "done", "failed"]),
                name="billing_exportjob_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(progress__lte=100), name="billing_exportjob_progress_max"
            ),
        ]
        indexes = [
            models.Index(fields=["created_by", "created_at"], name="billing_exportjob_user"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.format} export #{self.pk} ({self.status})"


# --- Fapiao (billing.fapiao) and bank transfers (billing.transfers) -------------------------

from billing.fapiao.models import (  # noqa: E402, F401
    COVERING_STATUSES,
    OPEN_STATUSES,
    FapiaoCoverage,
    FapiaoKind,
    FapiaoLine,
    FapiaoRequest,
    FapiaoStatus,
    RedLetterFapiao,
)
from billing.transfers.models import (  # noqa: E402, F401
    BankLine,
    BankTransferNotice,
    LineSource,
    LineStatus,
    NoticeStatus,
    PaymentReference,
)
