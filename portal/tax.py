"""What a Chinese VAT invoice (发票) needs to know of a product: its tax classification code
(税收分类编码, the 19 digits of the State Taxation Administration's goods and services table)
and its VAT rate. Catalog instance types and meters carry both, set by operators; either left
empty falls back to ``settings.FAPIAO_DEFAULT_TAX_CODE`` and ``FAPIAO_DEFAULT_VAT_RATE``."""

from decimal import Decimal

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

TAX_CODE_LENGTH = 19
TAX_CODE_PATTERN = r"^[0-9]{19}$"

tax_code_validator = RegexValidator(
    TAX_CODE_PATTERN, _("A tax classification code is exactly 19 digits.")
)

# The VAT rates in force in China (general and small-scale taxpayers), as fractions.
VAT_RATE_CHOICES = [
    (Decimal("0.1300"), "13 %"),
    (Decimal("0.0900"), "9 %"),
    (Decimal("0.0600"), "6 %"),
    (Decimal("0.0500"), "5 %"),
    (Decimal("0.0300"), "3 %"),
    (Decimal("0.0100"), "1 %"),
    (Decimal("0.0000"), "0 %"),
]


def tax_code_field() -> models.CharField:
    return models.CharField(
        _("tax classification code"),
        max_length=TAX_CODE_LENGTH,
        blank=True,
        validators=[tax_code_validator],
        help_text=_(
            "税收分类编码: 19 digits. Empty: the portal's default (FAPIAO_DEFAULT_TAX_CODE)."
        ),
    )


def vat_rate_field() -> models.DecimalField:
    return models.DecimalField(
        _("VAT rate"),
        max_digits=5,
        decimal_places=4,
        null=True,
        blank=True,
        choices=VAT_RATE_CHOICES,
        help_text=_("The VAT rate on fapiao lines. Empty: the default (FAPIAO_DEFAULT_VAT_RATE)."),
    )


def tax_constraints(prefix: str) -> list[models.CheckConstraint]:
    """The database's word on the two fields: 19 digits or empty, a rate from 0 to below 1."""
    return [
        models.CheckConstraint(
            condition=Q(tax_code="") | Q(tax_code__regex=TAX_CODE_PATTERN),
            name=f"{prefix}_tax_code_19_digits",
        ),
        models.CheckConstraint(
            condition=Q(vat_rate__isnull=True) | Q(vat_rate__gte=0, vat_rate__lt=1),
            name=f"{prefix}_vat_rate_range",
        ),
    ]
