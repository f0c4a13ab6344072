"""Bank transfers: payment references, customer notices with slips, and the bank's lines.

Imported by ``billing.models`` so that the models belong to the billing app."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import Currency, Organization

MONEY_MAX_DIGITS = 18
MONEY_DECIMAL_PLACES = 2


class PaymentReference(models.Model):
    """An organisation's stable payment reference, quoted in a transfer's remark (附言)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="payment_reference"
    )
    code = models.CharField(_("payment reference"), max_length=16, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("payment reference")
        verbose_name_plural = _("payment references")

    def __str__(self) -> str:
        return self.code


class NoticeStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    MATCHED = "matched", _("Matched")
    REJECTED = "rejected", _("Rejected")


class BankTransferNotice(models.Model):
    """A customer's word that a transfer was sent, with the remittance slip (stored privately,
    see ``billing.transfers.slips``)."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="bank_transfer_notices"
    )
    reference = models.CharField(_("payment reference"), max_length=16)
    amount = models.DecimalField(
        _("amount"), max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES
    )
    currency = models.CharField(_("currency"), max_length=3, choices=Currency.choices)
    sent_on = models.DateField(_("date sent"))
    payer_name = models.CharField(_("payer account name"), max_length=200)
    slip_name = models.CharField(_("slip file name"), max_length=200)
    slip_path = models.CharField(max_length=200, editable=False)
    slip_content_type = models.CharField(max_length=40, editable=False)
    slip_size = models.PositiveIntegerField(default=0, editable=False)
    status = models.CharField(
        _("status"), max_length=10, choices=NoticeStatus.choices, default=NoticeStatus.PENDING
    )
    reject_reason = models.CharField(_("reason"), max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = _("bank transfer notice")
        verbose_name_plural = _("bank transfer notices")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "matched", "rejected"]),
                name="billing_notice_status_valid",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_notice_positive"),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="billing_notice_org_time"),
            models.Index(fields=["status", "created_at"], name="billing_notice_status"),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.amount} {self.currency} sent {self.sent_on}"


class LineStatus(models.TextChoices):
    UNMATCHED = "unmatched", _("Unmatched")
    MATCHED = "matched", _("Matched")
    RETURNED = "returned", _("Returned to sender")


class LineSource(models.TextChoices):
    MANUAL = "manual", _("Entered by hand")
    STATEMENT = "statement", _("Bank statement import")


class BankLine(models.Model):
    """One transfer received on the centre's account, as the bank reports it. Matched once to
    one organisation: the credit is posted with the ledger key ``bank:<id>``."""

    value_date = models.DateField(_("value date"))
    amount = models.DecimalField(
        _("amount"), max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES
    )
    currency = models.CharField(_("currency"), max_length=3, choices=Currency.choices)
    payer_name = models.CharField(_("payer name"), max_length=200)
    payer_account = models.CharField(_("payer account"), max_length=64, blank=True)
    remark = models.CharField(_("remark"), max_length=300, blank=True)
    bank_reference = models.CharField(
        _("bank transaction id"),
        max_length=100,
        blank=True,
        help_text=_("The bank's id of the transaction: a line is imported once."),
    )
    source = models.CharField(max_length=10, choices=LineSource.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=LineStatus.choices, default=LineStatus.UNMATCHED
    )
    suggested_organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    organization = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="bank_lines",
    )
    notice = models.OneToOneField(
        BankTransferNotice,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="bank_line",
    )
    payment = models.OneToOneField(
        "billing.Payment", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    return_reason = models.CharField(_("reason"), max_length=300, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("received bank transfer")
        verbose_name_plural = _("received bank transfers")
        ordering = ["-value_date", "-id"]
        permissions = [("match_bank_transfer", "Can match received bank transfers")]
        constraints = [
            models.UniqueConstraint(
                fields=["bank_reference"],
                condition=~Q(bank_reference=""),
                name="billing_bank_line_once",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["unmatched", "matched", "returned"]),
                name="billing_bank_line_status_valid",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_bank_line_positive"),
            models.CheckConstraint(
                condition=Q(status="matched", organization__isnull=False, payment__isnull=False)
                | ~Q(status="matched"),
                name="billing_bank_line_matched_has_org",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-value_date"], name="billing_bank_line_status"),
        ]

    def __str__(self) -> str:
        return f"{self.value_date} {self.amount} {self.currency} from {self.payer_name}"
