"""Invoice and credit note PDFs (WeasyPrint, A4), from ``billing/documents/invoice.html``.

An issued document's PDF is rendered once and stored with it, frozen by the database like the
rest of it (the freeze trigger lets it be stored once, never changed); ``invoice_pdf`` returns
those bytes. A single finalize and a credit note render it as they issue the document; the
month close leaves it to workers after commit (``emails.issue_documents_later``), and until one
has stored it, ``invoice_pdf`` renders it on demand and stores it (``invoice_pdf_store``). Either
way it is rendered from the document as it was issued (``as_issued``): an invoice paid or voided
before its PDF was rendered still reads as it did the moment it was issued. A draft is rendered
live each time, watermarked DRAFT. The stored PDF is in the default language; in Chinese a
document is rendered on demand (``invoice_pdf(invoice, language)``), as a download asks for it
or for an email to someone who chose Chinese. Fonts: DejaVu Sans, with Noto Sans CJK SC for Chinese names
and addresses (fonts-noto-cjk).
"""

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django_countries import countries

from billing.models import Invoice, InvoiceKind, InvoiceStatus, TaxStatus
from portal.money import MINUS, decimal_text, format_amount, format_unit_price, with_currency

TAX_NOTES = {
    TaxStatus.REVERSE_CHARGE: gettext_lazy(
        "Reverse charge: the recipient is liable for the tax on these services "
        "(Article 196, Council Directive 2006/112/EC)."
    ),
    TaxStatus.ZERO_RATED: gettext_lazy("Zero-rated supply: tax charged at 0 %."),
    TaxStatus.NOT_SUBJECT: gettext_lazy(
        "Not subject to tax: these services are outside the scope of tax."
    ),
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
    count = 1 if value == 1 else 2
    if unit == "hour":
        return ngettext("%(number)s hour", "%(number)s hours", count) % {"number": number}
    if unit == "GB-month":
        return ngettext("%(number)s GB-month", "%(number)s GB-months", count) % {"number": number}
    label = unit if value == 1 else PLURAL_UNITS.get(unit, _plural(unit))
    return f"{number} {label}"


def percent(rate: Decimal) -> str:
    return decimal_text(Decimal(rate) * 100)


def buyer_address_lines(buyer: Mapping[str, Any]) -> list[str]:
    """The buyer's postal address as printed (without the country): street, second line,
    postcode and city; empty for a snapshot taken before organisations had an address."""
    place = " ".join(part for part in (buyer.get("postcode"), buyer.get("city")) if part)
    return [line for line in (buyer.get("street"), buyer.get("address_line2"), place) if line]


def _country_name(code: str) -> str:
    return str(dict(countries).get(code, code)) if code else ""


@dataclass(frozen=True)
class DocumentLine:
    position: int
    kind: str
    kind_label: str
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    exact_amount: Decimal
    amount: Decimal


@dataclass(frozen=True)
class CorrectedDocument:
    number: str | None
    issued_at: datetime | None


@dataclass(frozen=True)
class Document:
    """An invoice or credit note as it states itself, built once (``document_build``) and read
    by the PDF template and the e-invoice writers alike. Amounts are the stored ones (a credit
    note's are negative); the parties are the snapshot taken when it was issued, or, for a
    draft, as they are now."""

    number: str
    kind: str
    status: str
    currency: str
    billing_mode: str
    issued_at: datetime | None
    due_at: datetime | None
    period_start: date
    period_end: date  # exclusive
    note: str
    payment_reference: str
    tax_status: str
    tax_status_label: str
    tax_rate: Decimal
    seller: Mapping[str, Any]
    buyer: Mapping[str, Any]
    lines: tuple[DocumentLine, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    corrects: CorrectedDocument | None

    @property
    def draft(self) -> bool:
        return self.status == InvoiceStatus.DRAFT

    @property
    def credit_note(self) -> bool:
        return self.kind == InvoiceKind.CREDIT_NOTE

    @property
    def period_last(self) -> date:
        return date.fromordinal(self.period_end.toordinal() - 1)


def document_build(invoice: Invoice) -> Document:
    """The document of an invoice or credit note (two queries: its lines, and what it corrects)."""
    from billing.invoicing.services import buyer_snapshot

    draft = invoice.status == InvoiceStatus.DRAFT
    corrects = invoice.corrects if invoice.kind == InvoiceKind.CREDIT_NOTE else None
    return Document(
        number=invoice.number or "",
        kind=invoice.kind,
        status=invoice.status,
        currency=invoice.currency,
        billing_mode=invoice.billing_mode,
        issued_at=invoice.issued_at,
        due_at=invoice.due_at,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        note=invoice.note,
        payment_reference=invoice.payment_reference,
        tax_status=invoice.tax_status,
        tax_status_label=invoice.get_tax_status_display(),
        tax_rate=invoice.tax_rate,
        seller=MappingProxyType(
            dict(invoice.seller or ({} if not draft else settings.BILLING_SELLER))
        ),
        buyer=MappingProxyType(
            dict(invoice.buyer or ({} if not draft else buyer_snapshot(invoice.organization)))
        ),
        lines=tuple(
            DocumentLine(
                position=line.position,
                kind=line.kind,
                kind_label=line.get_kind_display(),
                description=line.description,
                quantity=line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                exact_amount=line.exact_amount,
                amount=line.amount,
            )
            for line in invoice.lines.all()
        ),
        subtotal=invoice.subtotal,
        tax=invoice.tax,
        total=invoice.total,
        credits_applied=invoice.credits_applied,
        amount_due=invoice.amount_due,
        corrects=CorrectedDocument(corrects.number, corrects.issued_at) if corrects else None,
    )


def document_context(invoice: Invoice, document: Document | None = None) -> dict:
    """What the template shows, from the document (built here unless given)."""
    doc = document or document_build(invoice)
    seller = dict(doc.seller or settings.BILLING_SELLER)
    if doc.buyer:
        buyer = dict(doc.buyer)
    else:
        from billing.invoicing.services import buyer_snapshot

        buyer = buyer_snapshot(invoice.organization)
    seller["country_name"] = _country_name(seller.get("country", ""))
    if not buyer.get("country_name"):
        buyer["country_name"] = _country_name(buyer.get("country", ""))
    if not buyer.get("address"):
        buyer["address"] = "\n".join(buyer_address_lines(buyer))
    currency = doc.currency
    lines = [
        {
            "description": line.description,
            "quantity": quantity(line.quantity, line.unit),
            "unit_price": price(line.unit_price, currency),
            "amount": format_amount(line.amount, currency),
        }
        for line in doc.lines
    ]
    if doc.tax_status == TaxStatus.STANDARD:
        tax_label = _("Tax %(rate)s %%") % {"rate": percent(doc.tax_rate)}
    else:
        tax_label = _("Tax (%(status)s)") % {"status": doc.tax_status_label.lower()}
    reference = doc.payment_reference
    return {
        "invoice": invoice,
        "document": doc,
        "draft": doc.draft,
        "credit_note": doc.credit_note,
        "title": _("Credit note") if doc.credit_note else _("Invoice"),
        "number": doc.number or _("Draft"),
        "seller": seller,
        "buyer": buyer,
        "lines": lines,
        "period_first": doc.period_start,
        "period_last": doc.period_last,
        "subtotal": format_amount(doc.subtotal, currency),
        "tax": format_amount(doc.tax, currency),
        "tax_label": tax_label,
        "tax_note": str(TAX_NOTES.get(doc.tax_status, "")),
        "total": format_amount(doc.total, currency),
        "credit": format_amount(abs(doc.total), currency),
        "credit_in": with_currency(format_amount(abs(doc.total), currency), currency),
        "total_in": with_currency(format_amount(doc.total, currency), currency),
        "amount_due_in": with_currency(format_amount(doc.amount_due, currency), currency),
        "page_counter": _page_counter(),
        "credits_applied": format_amount(doc.credits_applied, currency),
        "amount_due": format_amount(doc.amount_due, currency),
        "show_credits": bool(doc.credits_applied),
        "currency": currency,
        "prepaid": doc.billing_mode == "prepaid",
        "nothing_due": not doc.credit_note and doc.total == 0,
        "reference": " ".join(reference[i : i + 4] for i in range(0, len(reference), 4)),
        "corrects": doc.corrects,
    }


def _page_counter() -> str:
    """The footer's "Page 1 of 2" as CSS ``content``: the translated words around the page
    counters (quotes and backslashes taken out, so the text cannot leave its CSS string)."""
    marker = "\x00"
    words = _("Page %(page)s of %(pages)s") % {"page": marker, "pages": marker}
    parts = [part.replace('"', "").replace("\\", "") for part in words.split(marker)]
    if len(parts) != 3:  # a translation that lost a counter: the English words
        parts = ["Page ", " of ", ""]
    before, middle, after = parts
    return f'"{before}" counter(page) "{middle}" counter(pages) "{after}"'


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


def _language(language: str | None) -> str:
    """A supported language: the one asked for, else the active one, else the default."""
    asked = language or translation.get_language() or settings.LANGUAGE_CODE
    try:
        return translation.get_supported_language_variant(asked)
    except LookupError:
        return settings.LANGUAGE_CODE


def render_pdf(invoice: Invoice) -> bytes:
    """Render the document now (a draft, or one being issued), in the active language."""
    from weasyprint import HTML

    fetcher, fonts = _renderer_parts()
    html = HTML(string=render_html(invoice), base_url=str(settings.BASE_DIR), url_fetcher=fetcher)
    return html.write_pdf(font_config=fonts)


# The Factur-X 1.0 XMP extension schema and its four properties (Factur-X 1.0.07, section 6.2.2:
# a PDF/A-3 file must declare the fx: properties it uses in a pdfaExtension schema).
FACTURX_URN = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"
FACTURX_FILENAME = "factur-x.xml"
_FACTURX_PROPERTIES = (
    ("DocumentFileName", "The name of the embedded XML document"),
    ("DocumentType", "The type of the hybrid document in capital letters, e.g. INVOICE"),
    ("Version", "The actual version of the standard applying to the embedded XML document"),
    ("ConformanceLevel", "The conformance level of the embedded XML document"),
)


def _facturx_xmp(level: str) -> bytes:
    properties = "".join(
        '<rdf:li rdf:parseType="Resource">'
        f"<pdfaProperty:name>{name}</pdfaProperty:name>"
        "<pdfaProperty:valueType>Text</pdfaProperty:valueType>"
        "<pdfaProperty:category>external</pdfaProperty:category>"
        f"<pdfaProperty:description>{description}</pdfaProperty:description>"
        "</rdf:li>"
        for name, description in _FACTURX_PROPERTIES
    )
    return (
        '<rdf:Description rdf:about=""'
        ' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns:pdfaExtension="http://www.aiim.org/pdfa/ns/extension/"'
        ' xmlns:pdfaSchema="http://www.aiim.org/pdfa/ns/schema#"'
        ' xmlns:pdfaProperty="http://www.aiim.org/pdfa/ns/property#">'
        "<pdfaExtension:schemas><rdf:Bag>"
        '<rdf:li rdf:parseType="Resource">'
        "<pdfaSchema:schema>Factur-X PDFA Extension Schema</pdfaSchema:schema>"
        f"<pdfaSchema:namespaceURI>{FACTURX_URN}</pdfaSchema:namespaceURI>"
        "<pdfaSchema:prefix>fx</pdfaSchema:prefix>"
        f"<pdfaSchema:property><rdf:Seq>{properties}</rdf:Seq></pdfaSchema:property>"
        "</rdf:li></rdf:Bag></pdfaExtension:schemas></rdf:Description>"
        f'<rdf:Description rdf:about="" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        f' xmlns:fx="{FACTURX_URN}">'
        "<fx:DocumentType>INVOICE</fx:DocumentType>"
        f"<fx:DocumentFileName>{FACTURX_FILENAME}</fx:DocumentFileName>"
        "<fx:Version>1.0</fx:Version>"
        f"<fx:ConformanceLevel>{level}</fx:ConformanceLevel>"
        "</rdf:Description>"
    ).encode()


def _pdfa_metadata(metadata, extra: bytes):
    """WeasyPrint's document metadata, with ``extra`` RDF descriptions written inside its
    ``rdf:RDF`` (WeasyPrint's own ``xmp_metadata`` option puts them after it, outside)."""
    from weasyprint.pdf.metadata import DocumentMetadata

    class Metadata(DocumentMetadata):
        def generate_rdf_metadata(self, variant, version, conformance):
            rdf = super().generate_rdf_metadata(variant, version, conformance)
            end = b"</rdf:RDF>"
            return rdf[: rdf.rindex(end)] + extra + end

    return Metadata(**vars(metadata))


def render_facturx_pdf(invoice: Invoice, xml: bytes, *, level: str = "EN 16931") -> bytes:
    """An issued document as a PDF/A-3B (WeasyPrint's variant: sRGB output intent, a document
    /ID, XMP with pdfaid part 3 conformance B) with ``xml`` embedded as ``factur-x.xml``
    (AFRelationship /Data, listed in the catalog's /AF) and the Factur-X XMP properties. Its
    words are the default language's and its dates the issue's, in the XMP and the Info
    dictionary alike. Rendered from the document as issued, like the stored PDF."""
    import base64

    from weasyprint import HTML, Attachment

    if invoice.status == InvoiceStatus.DRAFT or not invoice.issued_at:
        raise ValueError("only an issued document has a Factur-X PDF")
    fetcher, fonts = _renderer_parts()
    with translation.override(settings.LANGUAGE_CODE):
        html = HTML(
            string=render_html(as_issued(invoice)),
            base_url=str(settings.BASE_DIR),
            url_fetcher=fetcher,
        )
        document = html.render(font_config=fonts)
    issued = invoice.issued_at.astimezone(UTC).replace(microsecond=0)
    document.metadata = _pdfa_metadata(document.metadata, _facturx_xmp(level))
    document.metadata.created = document.metadata.modified = issued.isoformat()
    attachment = Attachment(
        url="data:text/xml;base64," + base64.b64encode(xml).decode("ascii"),
        url_fetcher=fetcher,
        name=FACTURX_FILENAME,
        description="Factur-X invoice",
        created=issued,
        modified=issued,
        relationship="Data",
    )
    return document.write_pdf(pdf_variant="pdf/a-3b", attachments=[attachment])


def invoice_pdf(invoice: Invoice, language: str | None = None) -> bytes:
    """The document's PDF in ``language`` (by default the active one): the stored one once
    issued (rendered and stored now if no worker has yet), a live DRAFT rendering before. The
    stored PDF is in the default language (``settings.LANGUAGE_CODE``); in another language an
    issued document is rendered on demand from the document as issued, and not stored."""
    language = _language(language)
    if invoice.status == InvoiceStatus.DRAFT:
        with translation.override(language):
            return render_pdf(invoice)
    if language != _language(settings.LANGUAGE_CODE):
        with translation.override(language):
            return render_pdf(as_issued(invoice))
    if invoice.pdf:
        return bytes(invoice.pdf)
    return invoice_pdf_store(invoice)


def as_issued(invoice: Invoice) -> Invoice:
    """A copy of an issued document as it was the moment it was issued: the status and
    settlement issuing gave it (``services.settle_at_issue``), not a payment, void or credit
    since. Everything else a PDF shows is frozen."""
    from billing.invoicing.services import settle_at_issue

    issued = copy.copy(invoice)
    issued.voided_at = None
    settle_at_issue(issued, invoice.issued_at)
    return issued


def invoice_pdf_store(invoice: Invoice) -> bytes:
    """Render an issued document's PDF from the document as issued and store it, once: if
    another worker or request stored one first, that one is kept and returned (the UPDATE
    only writes a PDF that is not there, and waits for one being written)."""
    if invoice.status == InvoiceStatus.DRAFT:
        raise ValueError("a draft's PDF is rendered live, never stored")
    with translation.override(settings.LANGUAGE_CODE):  # the stored PDF's language
        pdf = render_pdf(as_issued(invoice))
    stored = Invoice.objects.filter(pk=invoice.pk, pdf__isnull=True).exclude(
        status=InvoiceStatus.DRAFT
    )
    if not stored.update(pdf=pdf):
        kept = Invoice.objects.filter(pk=invoice.pk).values_list("pdf", flat=True).first()
        if kept is not None:
            pdf = bytes(kept)
    invoice.pdf = pdf
    return pdf
