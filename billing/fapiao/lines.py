"""The lines of a fapiao, computed from the invoices it covers.

Fapiao amounts are tax-inclusive (价税合计): what the customer paid. Per invoice:

1. Each invoice line is classified by its product: a compute line by its instance type, any
   other usage line by its meter (``meter_key``), anything else (credits, adjustments) by the
   defaults ``settings.FAPIAO_DEFAULT_TAX_CODE`` / ``FAPIAO_DEFAULT_VAT_RATE``; so is a product
   that has no code or rate of its own.
2. The invoice's tax (if it carries any) is spread over its lines in proportion to their
   amounts, to the cent, by the largest-remainder method, so the lines' gross amounts add up to
   the invoice total exactly.
3. When less than the whole invoice is covered (a credit note or refund took part of it back,
   or part was requested before), the covered amount is spread over the classes the same way.

Across invoices the gross amounts of one class (tax code, VAT rate, item name) are added (exact,
in cents), and each fapiao line is split once: ``net = round_half_up(gross / (1 + rate), 2)``
(金额) and ``tax = gross - net`` (税额), so net + tax is the gross to the fen on every line and
the request's total is the sum of what it covers, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _

from billing.models import Invoice, InvoiceLine, LineKind
from portal.catalog.models import InstanceType
from portal.metering.models import Meter
from portal.money import minor_units, round_half_up

CENT = Decimal("0.01")


@dataclass(frozen=True, order=True)
class TaxClass:
    tax_code: str
    vat_rate: Decimal
    name: str


@dataclass(frozen=True)
class FapiaoLineDraft:
    tax_code: str
    vat_rate: Decimal
    name: str
    gross: Decimal
    net: Decimal
    tax: Decimal


def default_class(name: str = "") -> TaxClass:
    return TaxClass(
        tax_code=settings.FAPIAO_DEFAULT_TAX_CODE,
        vat_rate=Decimal(str(settings.FAPIAO_DEFAULT_VAT_RATE)),
        name=name or _("Cloud computing services"),
    )


def allocate(total: Decimal, weights: list[Decimal], places: int = 2) -> list[Decimal]:
    """``total`` spread over ``weights`` in proportion, each share to ``places`` decimals, the
    shares adding up to ``total`` exactly (largest remainder: the units left over after
    truncation go to the largest fractional parts, first ones first on a tie)."""
    if not weights:
        return []
    unit = Decimal(1).scaleb(-places)
    whole = sum(weights, Decimal(0))
    if whole == 0:
        shares = [Decimal(0)] * len(weights)
        shares[0] = total
        return shares
    exact = [total * weight / whole for weight in weights]
    floors = [(value / unit).to_integral_value(rounding=ROUND_FLOOR) * unit for value in exact]
    left = int(((total - sum(floors, Decimal(0))) / unit).to_integral_value())
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += unit
    return floors


class _Classifier:
    """Tax classes of invoice lines, with the instance types and meters read once."""

    def __init__(self, lines: list[InvoiceLine]) -> None:
        type_ids = {line.instance_type_id for line in lines if line.instance_type_id}
        meter_keys = {line.meter_key for line in lines if line.meter_key}
        self.types = InstanceType.objects.in_bulk(type_ids)
        self.meters = {meter.key: meter for meter in Meter.objects.filter(key__in=meter_keys)}

    def classify(self, line: InvoiceLine) -> TaxClass:
        base = default_class()
        product = None
        name = base.name
        if line.kind == LineKind.COMPUTE and line.instance_type_id in self.types:
            product = self.types[line.instance_type_id]
            name = _("GPU cloud compute %(type)s") % {"type": product.name}
        elif line.meter_key in self.meters and line.kind in (LineKind.STORAGE, LineKind.METER):
            product = self.meters[line.meter_key]
            name = _("Cloud storage") if line.kind == LineKind.STORAGE else product.name
        if product is None:
            return base
        return TaxClass(
            tax_code=product.tax_code or base.tax_code,
            vat_rate=product.vat_rate if product.vat_rate is not None else base.vat_rate,
            name=name,
        )


def invoice_classes(invoice: Invoice, lines: list[InvoiceLine], classifier) -> dict:
    """{tax class: gross} of one invoice, adding up to its total (step 2 above)."""
    if not lines:
        return {default_class(): invoice.total}
    amounts = [line.amount for line in lines]
    grosses = (
        [a + share for a, share in zip(amounts, allocate(invoice.tax, amounts), strict=True)]
        if invoice.tax
        else amounts
    )
    classes: dict[TaxClass, Decimal] = {}
    for line, gross in zip(lines, grosses, strict=True):
        key = classifier.classify(line)
        classes[key] = classes.get(key, Decimal(0)) + gross
    return classes


def split_gross(gross: Decimal, rate: Decimal, currency: str = "CNY") -> tuple[Decimal, Decimal]:
    """(net, tax) of a tax-inclusive amount: net rounded once, half-up, tax the rest."""
    net = round_half_up(gross / (1 + rate), minor_units(currency))
    return net, gross - net


def fapiao_lines(portions: list[tuple[Invoice, Decimal]]) -> list[FapiaoLineDraft]:
    """The lines of a fapiao covering ``amount`` of each invoice (gross, at most its total)."""
    invoice_ids = [invoice.pk for invoice, _amount in portions]
    by_invoice: dict[int, list[InvoiceLine]] = {pk: [] for pk in invoice_ids}
    for line in InvoiceLine.objects.filter(invoice_id__in=invoice_ids).order_by(
        "invoice_id", "position"
    ):
        by_invoice[line.invoice_id].append(line)
    all_lines = [line for lines in by_invoice.values() for line in lines]
    with translation.override("zh-hans"):  # what the tax platform prints
        classifier = _Classifier(all_lines)
        totals: dict[TaxClass, Decimal] = {}
        for invoice, amount in portions:
            classes = invoice_classes(invoice, by_invoice[invoice.pk], classifier)
            keys = sorted(classes)
            covered = (
                [classes[key] for key in keys]
                if amount == invoice.total
                else allocate(amount, [max(classes[key], Decimal(0)) for key in keys])
            )
            for key, value in zip(keys, covered, strict=True):
                totals[key] = totals.get(key, Decimal(0)) + value
    drafts = []
    for key in sorted(totals):
        gross = totals[key]
        if gross == 0:
            continue
        net, tax = split_gross(gross, key.vat_rate)
        drafts.append(
            FapiaoLineDraft(
                tax_code=key.tax_code,
                vat_rate=key.vat_rate,
                name=key.name[:100],
                gross=gross,
                net=net,
                tax=tax,
            )
        )
    return drafts
