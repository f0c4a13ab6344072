"""Invoice and credit note PDFs (WeasyPrint, A4), from ``billing/documents/invoice.html``.

A finalized document's PDF is rendered once, when it is issued, and stored with it (frozen by
the database like the rest of it); ``invoice_pdf`` returns those bytes. A draft is rendered live
each time, watermarked DRAFT. Fonts: DejaVu Sans, with Noto Sans CJK SC for Chinese names and
addresses (fonts-noto-cjk).
"""

import threading
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.template.loader import render_to_string
from django_countries import countries

from billing.models import Invoice, InvoiceKind, InvoiceStatus, TaxStatus
from portal.money import MINUS, decimal_text, format_amount, format_unit_price

TAX_NOTES = {
    TaxStatus.REVERSE_CHARGE: (
        "Reverse charge: the recipient is liable for the tax on these services "
        "(Article 196, Council Directive 2006/112/EC)."
    ),
    TaxStatus.ZERO_RATED: "Zero-rated supply: tax charged at 0 %.",
    TaxStatus.NOT_SUBJECT: "Not subject to tax: these services are outside the scope of tax.",
}
PLURAL_UNITS = {"hour": "hours", "GB-month": "GB-months", "credit": "credit"}


def price(value: Decimal | None, currency: str) -> str:
    """A unit price: at least the currency's decimals, more only where the price has them."""
    if value is None:
        return "\u2014"
    return format_unit_price(value, currency, grouping=True, minus=MINUS)


def _plural(unit: str) -> str:
    """'request' -> 'requests'; units that are not plain lowercase words stay as they are."""
    return f"{unit}s" if unit.isalpha() and unit.islower() and not unit.endswith("s") else unit


def quantity(value: Decimal, unit: str) -> str:
    number = decimal_text(value, grouping=True)
    label = unit if value == 1 else PLURAL_UNITS.get(unit, _plural(unit))
    return f"{number} {label}"


def percent(rate: Decimal) -> str:
    return decimal_text(Decimal(rate) * 100)


def _country_name(code: str) -> str:
    return str(dict(countries).get(code, code)) if code else ""


def document_context(invoice: Invoice) -> dict:
    """What the template shows. Drafts show the parties as they are now; issued documents
    show the snapshot taken when they were issued."""
    from billing.invoicing import buyer_snapshot

    draft = invoice.status == InvoiceStatus.DRAFT
    seller = dict(invoice.seller or settings.BILLING_SELLER)
    buyer = dict(invoice.buyer or buyer_snapshot(invoice.organization))
    seller["country_name"] = _country_name(seller.get("country", ""))
    if not buyer.get("country_name"):
        buyer["country_name"] = _country_name(buyer.get("country", ""))
    credit_note = invoice.kind == InvoiceKind.CREDIT_NOTE
    currency = invoice.currency
    lines = [
        {
            "description": line.description,
            "quantity": quantity(line.quantity, line.unit),
            "unit_price": price(line.unit_price, currency),
            "amount": format_amount(line.amount, currency),
        }
        for line in invoice.lines.all()
    ]
    if invoice.tax_status == TaxStatus.STANDARD:
        tax_label = f"Tax {percent(invoice.tax_rate)} %"
    else:
        tax_label = f"Tax ({invoice.get_tax_status_display().lower()})"
    title = "Credit note" if credit_note else "Invoice"
    reference = invoice.payment_reference
    return {
        "invoice": invoice,
        "draft": draft,
        "credit_note": credit_note,
        "title": title,
        "number": invoice.number or "Draft",
        "seller": seller,
        "buyer": buyer,
        "lines": lines,
        "period_first": invoice.period_start,
        "period_last": date.fromordinal(invoice.period_end.toordinal() - 1),
        "subtotal": format_amount(invoice.subtotal, currency),
        "tax": format_amount(invoice.tax, currency),
        "tax_label": tax_label,
        "tax_note": TAX_NOTES.get(invoice.tax_status, ""),
        "total": format_amount(invoice.total, currency),
        "credit": format_amount(abs(invoice.total), currency),
        "credits_applied": format_amount(invoice.credits_applied, currency),
        "amount_due": format_amount(invoice.amount_due, currency),
        "show_credits": bool(invoice.credits_applied),
        "currency": invoice.currency,
        "prepaid": invoice.billing_mode == "prepaid",
        "reference": " ".join(reference[i : i + 4] for i in range(0, len(reference), 4)),
        "corrects": invoice.corrects if credit_note else None,
    }


def render_html(invoice: Invoice) -> str:
    return render_to_string("billing/documents/invoice.html", document_context(invoice))


_per_thread = threading.local()


def _renderer_parts():
    """A URL fetcher allowed nothing but data: URLs (the template needs no resources) and a
    font configuration, made once per thread and reused: WeasyPrint's defaults build both
    (and an SSL context) for every document, about 40 % of the time of a one-page invoice."""
    parts = getattr(_per_thread, "parts", None)
    if parts is None:
        from weasyprint.text.fonts import FontConfiguration
        from weasyprint.urls import URLFetcher

        parts = _per_thread.parts = (URLFetcher(allowed_protocols=("data",)), FontConfiguration())
    return parts


def render_pdf(invoice: Invoice) -> bytes:
    """Render the document now (a draft, or one being issued)."""
    from weasyprint import HTML

    fetcher, fonts = _renderer_parts()
    html = HTML(string=render_html(invoice), base_url=str(settings.BASE_DIR), url_fetcher=fetcher)
    return html.write_pdf(font_config=fonts)


def invoice_pdf(invoice: Invoice) -> bytes:
    """The document's PDF: the stored one once issued, a live DRAFT rendering before."""
    if invoice.status != InvoiceStatus.DRAFT and invoice.pdf:
        return bytes(invoice.pdf)
    return render_pdf(invoice)
