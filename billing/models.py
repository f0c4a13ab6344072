"""The credits ledger: an append-only list of money movements per organisation.

Every entry has a unique idempotency key, so a retried top-up, grant or debit is recorded once;
a usage record is debited at most once (unique). The balance is the sum of the entries; the
``Account`` keeps it cached, updated under its row lock in the same transaction as the entry.
Entries are never edited or deleted: corrections are new entries.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.accounts.models import Currency, Organization
from portal.metering.models import UsageRecord

# Ledger amounts keep full precision (usage is rated per second); invoices round once per line.
AMOUNT_MAX_DIGITS = 28
AMOUNT_DECIMAL_PLACES = 12


class EntryKind(models.TextChoices):
    TOP_UP = "top_up", "Top-up"
    GRANT = "grant", "Grant"
    USAGE = "usage", "Usage"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"
    ROUNDING = "rounding", "Rounding"


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
    reference = models.CharField(max_length=120, blank=True, help_text="e.g. a payment id.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
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
                condition=Q(kind__in=["top_up", "grant"], amount__gt=0)
                | ~Q(kind__in=["top_up", "grant"]),
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
