"""Fapiao (发票) requests, their lines, the invoices they cover, and red-letter (红字) records.

Imported by ``billing.models`` so that the models belong to the billing app. The rules live in
``billing.fapiao.services``."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Round
from django.db.models.lookups import Exact
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from portal.accounts.models import Currency, Organization

MONEY_MAX_DIGITS = 18
MONEY_DECIMAL_PLACES = 2
FAPIAO_NUMBER_PATTERN = r"^[0-9]{20}$"


def _money(verbose_name, **extra) -> models.DecimalField:
    return models.DecimalField(
        verbose_name, max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES, **extra
    )


def _cents_add_up(total: str, net: str, tax: str, name: str) -> models.CheckConstraint:
    # compared in cents: SQLite keeps decimals as floating point (see billing.models.Invoice)
    return models.CheckConstraint(
        condition=Exact(Round(F(total) * 100), Round(F(net) * 100) + Round(F(tax) * 100)),
        name=name,
    )


class FapiaoKind(models.TextChoices):
    ORDINARY = "ordinary", _("Ordinary VAT invoice (普通发票)")
    SPECIAL = "special", _("Special VAT invoice (专用发票)")


class FapiaoStatus(models.TextChoices):
    PENDING = "pending", _("Requested")
    EXPORTED = "exported", _("Sent to the tax platform")
    ISSUED = "issued", pgettext_lazy("fapiao status", "Issued")
    REJECTED = "rejected", _("Rejected")


OPEN_STATUSES = (FapiaoStatus.PENDING, FapiaoStatus.EXPORTED)
COVERING_STATUSES = (FapiaoStatus.PENDING, FapiaoStatus.EXPORTED, FapiaoStatus.ISSUED)


class FapiaoRequest(models.Model):
    """A customer's request for one fapiao over what some of its paid invoices cover; finance
    exports it to the tax platform and records the fapiao the tax authority issued."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="fapiao_requests"
    )
    kind = models.CharField(_("kind"), max_length=10, choices=FapiaoKind.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=FapiaoStatus.choices, default=FapiaoStatus.PENDING
    )
    currency = models.CharField(_("currency"), max_length=3, choices=Currency.choices)
    amount = _money(_("amount (tax included)"))
    net = _money(_("amount before tax"))
    tax = _money(_("tax"))
    buyer_title = models.CharField(_("buyer title (抬头)"), max_length=200)
    buyer_tax_id = models.CharField(_("Unified Social Credit Code"), max_length=18)
    buyer_address = models.CharField(_("registered address"), max_length=300, blank=True)
    buyer_phone = models.CharField(_("phone"), max_length=40, blank=True)
    buyer_bank = models.CharField(_("bank"), max_length=200, blank=True)
    buyer_account = models.CharField(_("bank account"), max_length=64, blank=True)
    email = models.EmailField(_("email for the fapiao"), blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    exported_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reject_reason = models.CharField(_("reason"), max_length=300, blank=True)
    # what the tax authority issued
    number = models.CharField(_("fapiao number"), max_length=20, null=True, blank=True, unique=True)
    issued_on = models.DateField(_("date issued"), null=True, blank=True)
    issued_net = _money(_("issued amount before tax"), null=True, blank=True)
    issued_tax = _money(_("issued tax"), null=True, blank=True)
    issued_total = _money(_("issued total"), null=True, blank=True)
    file_name = models.CharField(_("file name"), max_length=200, blank=True)
    file_path = models.CharField(max_length=200, blank=True, editable=False)
    file_content_type = models.CharField(max_length=40, blank=True, editable=False)
    file_size = models.PositiveIntegerField(default=0, editable=False)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    issued_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When the customer was told it is issued.")
    )

    class Meta:
        verbose_name = _("fapiao request")
        verbose_name_plural = _("fapiao requests")
        ordering = ["-created_at", "-id"]
        permissions = [("issue_fapiao", "Can export fapiao requests and record issued fapiao")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=FapiaoKind.values), name="billing_fapiao_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=FapiaoStatus.values), name="billing_fapiao_status_valid"
            ),
            models.CheckConstraint(condition=Q(currency="CNY"), name="billing_fapiao_in_cny"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_fapiao_positive"),
            _cents_add_up("amount", "net", "tax", "billing_fapiao_amount_is_net_plus_tax"),
            models.CheckConstraint(
                condition=(
                    Q(status="issued", number__regex=FAPIAO_NUMBER_PATTERN)
                    & Q(issued_on__isnull=False, issued_total__isnull=False)
                )
                | (~Q(status="issued") & Q(number__isnull=True)),
                name="billing_fapiao_number_iff_issued",
            ),
            models.CheckConstraint(
                condition=Q(issued_total__isnull=True) | Q(issued_total=F("amount")),
                name="billing_fapiao_issued_total_is_amount",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="billing_fapiao_org_time"),
            models.Index(fields=["status", "created_at"], name="billing_fapiao_status"),
        ]

    def __str__(self) -> str:
        return self.number or f"Fapiao request #{self.pk}"

    @property
    def serial(self) -> str:
        """Its serial number in the batch spreadsheet (发票流水号), by which finance finds it."""
        return f"FP{self.pk:08d}"

    @property
    def is_special(self) -> bool:
        return self.kind == FapiaoKind.SPECIAL


class FapiaoCoverage(models.Model):
    """How much (tax included) of one invoice a request covers."""

    request = models.ForeignKey(FapiaoRequest, on_delete=models.CASCADE, related_name="covers")
    invoice = models.ForeignKey(
        "billing.Invoice", on_delete=models.PROTECT, related_name="fapiao_covers"
    )
    amount = _money(_("amount"))

    class Meta:
        verbose_name = _("invoice covered")
        verbose_name_plural = _("invoices covered")
        ordering = ["request", "invoice__period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "invoice"], name="billing_fapiao_cover_once"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_fapiao_cover_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice}: {self.amount}"


class FapiaoLine(models.Model):
    """One line of the fapiao: a tax class (code, rate, item name) and its amounts."""

    request = models.ForeignKey(FapiaoRequest, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(_("item"), max_length=100)
    tax_code = models.CharField(_("tax classification code"), max_length=19)
    vat_rate = models.DecimalField(_("VAT rate"), max_digits=5, decimal_places=4)
    gross = _money(_("amount (tax included)"))
    net = _money(_("amount before tax"))
    tax = _money(_("tax"))

    class Meta:
        verbose_name = _("fapiao line")
        verbose_name_plural = _("fapiao lines")
        ordering = ["request", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "position"], name="billing_fapiao_line_position"
            ),
            _cents_add_up("gross", "net", "tax", "billing_fapiao_line_gross_is_net_plus_tax"),
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.gross}"


class RedLetterFapiao(models.Model):
    """A red-letter (红字) fapiao recorded against an issued one: it reverses ``amount`` (tax
    included) of what the original covered of ``invoice``, so a credit note or refund on that
    invoice can go ahead."""

    original = models.ForeignKey(
        FapiaoRequest, on_delete=models.PROTECT, related_name="red_letters"
    )
    invoice = models.ForeignKey(
        "billing.Invoice", on_delete=models.PROTECT, related_name="red_letter_fapiao"
    )
    number = models.CharField(_("red-letter fapiao number"), max_length=20, unique=True)
    issued_on = models.DateField(_("date issued"))
    amount = _money(_("amount reversed (tax included)"))
    net = _money(_("amount before tax"))
    tax = _money(_("tax"))
    reason = models.CharField(_("reason"), max_length=300)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("red-letter fapiao")
        verbose_name_plural = _("red-letter fapiao")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(number__regex=FAPIAO_NUMBER_PATTERN),
                name="billing_red_letter_number_20_digits",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="billing_red_letter_positive"),
            _cents_add_up("amount", "net", "tax", "billing_red_letter_amount_is_net_plus_tax"),
        ]

    def __str__(self) -> str:
        return self.number
