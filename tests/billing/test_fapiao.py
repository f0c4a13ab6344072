"""Fapiao requests: what may be requested (paid CNY invoices, up to what was kept and not yet
requested), the buyer's details, special VAT invoices for verified enterprises only, the
minimum amount, and nothing written when refused."""

from decimal import Decimal

import pytest

from billing.errors import BillingErrorCode
from billing.fapiao import selectors
from billing.fapiao import services as fapiao
from billing.models import FapiaoRequest
from portal.accounts.models import AuditEvent
from portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tests.factories import accounts as account_factories
from tests.factories import billing as billing_factories
from tests.factories import fapiao as factories

D = Decimal
pytestmark = pytest.mark.django_db

SPECIAL_BUYER = dict(
    title="北京算力科技有限公司",
    tax_id=factories.CREDIT_CODE,
    address="北京市海淀区中关村大街1号",
    phone="010-62345678",
    bank="中国工商银行北京海淀支行",
    account="0200004509001234567",
)


def buyer(**overrides) -> fapiao.Buyer:
    return fapiao.Buyer(**{**SPECIAL_BUYER, **overrides})


@pytest.fixture
def paid(settings):
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    world = factories.cny_world()
    invoice = factories.paid_october(world, hours=10)  # 250.00 CNY
    return world, invoice


def test_a_special_request_for_a_paid_month_computes_lines_and_tax(paid):
    world, invoice = paid
    factories.verify_enterprise(world.org)
    request = fapiao.request_create(
        actor=world.actor(), kind="special", invoice_ids=[invoice.pk], buyer=buyer()
    )
    assert (request.status, request.currency, request.amount) == ("pending", "CNY", D("250.00"))
    assert (request.net, request.tax) == (D("235.85"), D("14.15"))
    assert [(c.invoice_id, c.amount) for c in request.covers.all()] == [(invoice.pk, D("250.00"))]
    [line] = request.lines.all()
    assert (line.gross, line.net, line.tax, line.vat_rate) == (
        D("250.00"),
        D("235.85"),
        D("14.15"),
        D("0.0600"),
    )
    assert request.email == world.org.billing_email
    assert AuditEvent.objects.filter(action="fapiao.request", organization=world.org).count() == 1
    # nothing more can be requested for the same invoice
    assert selectors.invoiceable(world.org) == []
    with pytest.raises(Conflict) as exc:
        fapiao.request_create(
            actor=world.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_INVOICE_NOT_INVOICEABLE


def test_a_prepaid_month_paid_from_credits_is_invoiceable(settings):
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    world = factories.cny_world()
    invoice = factories.paid_october(world, mode="prepaid", hours=8)
    assert (invoice.status, invoice.total) == ("paid", D("200.00"))
    [item] = selectors.invoiceable(world.org)
    assert item.amount == D("200.00")
    request = fapiao.request_create(
        actor=world.actor(),
        kind="ordinary",
        invoice_ids=[invoice.pk],
        buyer=fapiao.Buyer(title="某某公司", tax_id=factories.CREDIT_CODE),
    )
    assert request.amount == D("200.00")


def test_an_unpaid_invoice_is_not_invoiceable(settings):
    world = factories.cny_world()
    invoice = billing_factories.issued(world, mode="invoiced", hours=10, tax="0")
    assert invoice.status == "finalized"
    assert selectors.invoiceable(world.org) == []
    with pytest.raises(Conflict) as exc:
        fapiao.request_create(
            actor=world.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_INVOICE_NOT_INVOICEABLE
    assert not FapiaoRequest.objects.exists()


def test_a_credit_note_lowers_what_can_be_requested(paid):
    world, invoice = paid
    from billing.invoicing import services as invoicing

    invoicing.credit_note_create(
        invoice, actor=billing_factories.finance(world.org), reason="outage", amount="40.00"
    )
    [item] = selectors.invoiceable(world.org)
    assert (item.kept, item.amount) == (D("210.00"), D("210.00"))


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"tax_id": "91110108MA01ABCD1J"}, "buyer_tax_id", "fapiao_credit_code_invalid"),
        ({"tax_id": "123"}, "buyer_tax_id", "fapiao_credit_code_invalid"),
        ({"title": "  "}, "buyer_title", "fapiao_buyer_invalid"),
        ({"bank": ""}, "buyer_bank", "fapiao_special_details_missing"),
        ({"account": ""}, "buyer_account", "fapiao_special_details_missing"),
        ({"address": ""}, "buyer_address", "fapiao_special_details_missing"),
    ],
)
def test_bad_buyer_details_are_refused_by_field(paid, overrides, field, code):
    world, invoice = paid
    factories.verify_enterprise(world.org)
    with pytest.raises(InvalidInput) as exc:
        fapiao.request_create(
            actor=world.actor(),
            kind="special",
            invoice_ids=[invoice.pk],
            buyer=buyer(**overrides),
        )
    assert exc.value.code == code
    assert field in exc.value.details
    assert not FapiaoRequest.objects.exists()


def test_special_needs_a_verified_enterprise_and_its_own_code(paid):
    world, invoice = paid
    with pytest.raises(PermissionDenied) as exc:
        fapiao.request_create(
            actor=world.actor(), kind="special", invoice_ids=[invoice.pk], buyer=buyer()
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_SPECIAL_NEEDS_ENTERPRISE
    factories.verify_enterprise(world.org)
    other_code = factories.valid_code("91310000MA1FL0000")
    with pytest.raises(InvalidInput) as exc:
        fapiao.request_create(
            actor=world.actor(),
            kind="special",
            invoice_ids=[invoice.pk],
            buyer=buyer(tax_id=other_code),
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_CREDIT_CODE_INVALID
    # an ordinary invoice needs no verification and no bank details
    request = fapiao.request_create(
        actor=world.actor(),
        kind="ordinary",
        invoice_ids=[invoice.pk],
        buyer=fapiao.Buyer(title="另一家公司", tax_id=other_code),
    )
    assert request.kind == "ordinary"


def test_minimum_amount_is_a_setting(paid, settings):
    world, invoice = paid
    settings.FAPIAO_MIN_AMOUNT = "300.00"
    with pytest.raises(InvalidInput) as exc:
        fapiao.request_create(
            actor=world.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_AMOUNT_TOO_SMALL
    assert exc.value.details["minimum"] == "300.00"


def test_other_currency_no_invoices_and_unknown_kind_are_refused(paid):
    world, invoice = paid
    for kwargs, code in [
        ({"kind": "gold", "invoice_ids": [invoice.pk]}, "fapiao_kind_invalid"),
        ({"kind": "ordinary", "invoice_ids": []}, "fapiao_no_invoices"),
    ]:
        with pytest.raises(InvalidInput) as exc:
            fapiao.request_create(actor=world.actor(), buyer=buyer(), **kwargs)
        assert exc.value.code == code
    usd = account_factories.organization(currency="USD")
    with pytest.raises(InvalidInput) as exc:
        fapiao.request_create(
            actor=account_factories.actor(usd, account_factories.member(usd, "owner")),
            kind="ordinary",
            invoice_ids=[invoice.pk],
            buyer=buyer(),
        )
    assert exc.value.code == BillingErrorCode.FAPIAO_CURRENCY_NOT_CNY


def test_another_organisations_invoice_answers_404_and_viewers_may_not_ask(paid):
    world, invoice = paid
    other = factories.cny_world()
    with pytest.raises(NotFound):
        fapiao.request_create(
            actor=other.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
        )
    with pytest.raises(PermissionDenied):
        fapiao.request_create(
            actor=world.actor("viewer"), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
        )
    assert not FapiaoRequest.objects.exists()


def test_a_rejected_request_frees_its_invoices(paid):
    world, invoice = paid
    request = fapiao.request_create(
        actor=world.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
    )
    staff = billing_factories.finance_staff()
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="issue_fapiao"))
    staff = type(staff).objects.get(pk=staff.pk)
    fapiao.request_reject(user=staff, request_id=request.pk, reason="wrong title")
    [item] = selectors.invoiceable(world.org)
    assert item.amount == D("250.00")


# --- pages and API ------------------------------------------------------------------------------

from django.test import Client  # noqa: E402


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_lists_invoiceable_invoices_and_a_special_request_goes_through(paid):
    world, invoice = paid
    factories.verify_enterprise(world.org)
    client = _client(world.owner)
    page = client.get("/billing/fapiao/")
    assert page.status_code == 200
    assert invoice.number in page.content.decode()
    response = client.post(
        "/billing/fapiao/",
        {
            "kind": "special",
            "invoices": [str(invoice.pk)],
            "buyer_title": SPECIAL_BUYER["title"],
            "buyer_tax_id": SPECIAL_BUYER["tax_id"],
            "buyer_address": SPECIAL_BUYER["address"],
            "buyer_phone": SPECIAL_BUYER["phone"],
            "buyer_bank": SPECIAL_BUYER["bank"],
            "buyer_account": SPECIAL_BUYER["account"],
        },
    )
    request = FapiaoRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/billing/fapiao/{request.pk}/"
    detail = client.get(response["Location"]).content.decode()
    assert "235.85" in detail and "14.15" in detail


def test_the_page_shows_a_refusal_next_to_the_field_and_writes_nothing(paid):
    world, invoice = paid
    client = _client(world.owner)
    response = client.post(
        "/billing/fapiao/",
        {
            "kind": "ordinary",
            "invoices": [str(invoice.pk)],
            "buyer_title": "某某公司",
            "buyer_tax_id": "91110108MA01ABCD1J",
        },
    )
    assert response.status_code == 422
    assert "Unified Social Credit Code" in response.content.decode()
    assert not FapiaoRequest.objects.exists()


def test_another_organisations_request_answers_404_on_pages_and_api(paid, key_client):
    world, invoice = paid
    request = fapiao.request_create(
        actor=world.actor(), kind="ordinary", invoice_ids=[invoice.pk], buyer=buyer()
    )
    other = factories.cny_world()
    client = _client(other.owner)
    assert client.get(f"/billing/fapiao/{request.pk}/").status_code == 404
    assert client.get(f"/billing/fapiao/{request.pk}/file/").status_code == 404
    api = key_client("owner", organization=other.org)
    assert api.get(f"/api/v1/fapiao-requests/{request.pk}").status_code == 404
    assert api.get("/api/v1/fapiao-requests").json()["results"] == []


def test_api_creates_and_lists_requests_with_error_codes(paid, key_client):
    world, invoice = paid
    api = key_client("owner", organization=world.org)
    bad = api.post(
        "/api/v1/fapiao-requests",
        {"kind": "special", "invoices": [invoice.pk], "buyer_title": "x", "buyer_tax_id": "1"},
        format="json",
    )
    assert bad.status_code == 403
    assert bad.json()["error"]["code"] == "fapiao_special_needs_enterprise"
    created = api.post(
        "/api/v1/fapiao-requests",
        {
            "kind": "ordinary",
            "invoices": [invoice.pk],
            "buyer_title": "某某公司",
            "buyer_tax_id": factories.CREDIT_CODE,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["amount"], body["net"], body["tax"], body["currency"]) == (
        "250.00",
        "235.85",
        "14.15",
        "CNY",
    )
    assert body["invoices"] == [
        {"invoice": invoice.pk, "invoice_number": invoice.number, "amount": "250.00"}
    ]
    again = api.post(
        "/api/v1/fapiao-requests",
        {
            "kind": "ordinary",
            "invoices": [invoice.pk],
            "buyer_title": "某某公司",
            "buyer_tax_id": factories.CREDIT_CODE,
        },
        format="json",
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "fapiao_invoice_not_invoiceable"
    assert len(api.get("/api/v1/fapiao-requests").json()["results"]) == 1
    viewer = key_client("viewer", organization=world.org)
    assert viewer.post("/api/v1/fapiao-requests", {}, format="json").status_code == 403
