"""Red-letter fapiao: a credit note or refund on an invoice that a fapiao covers waits for the
red-letter record, and the fapiao never cover more than is kept."""

from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing.errors import BillingErrorCode
from billing.fapiao import selectors
from billing.fapiao import services as fapiao
from billing.invoicing import services as invoicing
from billing.models import Invoice, Payment, RedLetterFapiao
from billing.payments import services as payments
from portal.errors import Conflict, InvalidInput
from tests.billing.test_fapiao_finance import NUMBER, issuer, record
from tests.factories import billing as billing_factories
from tests.factories import fapiao as factories

D = Decimal
pytestmark = pytest.mark.django_db
RED = "26112000000087654321"


@pytest.fixture
def issued(settings, tmp_path):
    settings.FAPIAO_FILE_DIR = tmp_path / "fapiao"
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    world = factories.cny_world()
    invoice = factories.paid_october(world, hours=10)  # 250.00 CNY
    request = fapiao.request_create(
        actor=world.actor(),
        kind="ordinary",
        invoice_ids=[invoice.pk],
        buyer=fapiao.Buyer(title="北京算力科技有限公司", tax_id=factories.CREDIT_CODE),
    )
    return world, invoice, request


def red(user, invoice, **overrides):
    fields = dict(
        original_number=NUMBER,
        invoice_number=invoice.number,
        number=RED,
        issued_on=timezone.localdate(),
        amount="40.00",
        net="37.74",
        tax="2.26",
        reason="credit for an outage",
    )
    fields.update(overrides)
    return fapiao.red_letter_record(user=user, **fields)


def credit(invoice, world, amount="40.00"):
    return invoicing.credit_note_create(
        invoice, actor=billing_factories.finance(world.org), reason="outage", amount=amount
    )


def test_an_open_request_blocks_a_credit_note_until_it_is_rejected(issued):
    world, invoice, request = issued
    with pytest.raises(Conflict) as exc:
        credit(invoice, world)
    assert exc.value.code == BillingErrorCode.FAPIAO_REQUEST_OPEN
    assert not Invoice.objects.filter(kind="credit_note").exists()
    fapiao.request_reject(user=issuer(), request_id=request.pk, reason="customer asked")
    credit(invoice, world)


def test_a_credit_note_on_an_issued_fapiao_needs_the_red_letter_first(issued):
    world, invoice, request = issued
    user = issuer()
    record(request, user)
    with pytest.raises(Conflict) as exc:
        credit(invoice, world)
    assert exc.value.code == BillingErrorCode.FAPIAO_RED_LETTER_REQUIRED
    assert exc.value.details == {"fapiao": [NUMBER], "red_letter_at_least": "40.00"}
    assert not Invoice.objects.filter(kind="credit_note").exists()
    red(user, invoice)
    note = credit(invoice, world)
    assert note.total == D("-40.00")
    [item] = selectors.invoiceable_for([invoice])
    assert (item.kept, item.covered, item.amount) == (D("210.00"), D("210.00"), D("0.00"))
    # a second credit needs a second red letter
    with pytest.raises(Conflict):
        credit(invoice, world, amount="10.00")


def test_a_red_letter_never_reverses_more_than_the_fapiao_covers(issued):
    _world, invoice, request = issued
    user = issuer()
    record(request, user)
    with pytest.raises(Conflict) as exc:
        red(user, invoice, amount="250.01", net="235.86", tax="14.15")
    assert exc.value.code == BillingErrorCode.FAPIAO_RED_LETTER_TOO_LARGE
    red(user, invoice, amount="250.00", net="235.85", tax="14.15")
    with pytest.raises(Conflict) as exc:
        red(user, invoice, number="26112000000011111111", amount="0.01", net="0.01", tax="0")
    assert exc.value.details["reversible"] == "0.00"
    assert RedLetterFapiao.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"original_number": "26112000000000000000"}, "fapiao_not_issued"),
        ({"invoice_number": "INV-1999-000001"}, "fapiao_not_issued"),
        ({"number": "123"}, "fapiao_number_invalid"),
        ({"tax": "2.27"}, "fapiao_amounts_mismatch"),
        ({"reason": " "}, "reason_required"),
    ],
)
def test_bad_red_letters_are_refused(issued, overrides, code):
    _world, invoice, request = issued
    user = issuer()
    record(request, user)
    with pytest.raises(InvalidInput) as exc:
        red(user, invoice, **overrides)
    assert exc.value.code == code
    assert not RedLetterFapiao.objects.exists()


def test_a_refund_of_the_invoice_payment_needs_the_red_letter_too(issued):
    world, invoice, request = issued
    user = issuer()
    record(request, user)
    payment = Payment.objects.create(
        organization=world.org,
        purpose="invoice",
        invoice=invoice,
        amount=invoice.total,
        currency="CNY",
        status="succeeded",
        provider="fake",
        idempotency_key="invoice-payment-test",
        created_by="test",
    )
    operator = billing_factories.finance(world.org)
    with pytest.raises(Conflict) as exc:
        payments.refund_create(actor=operator, payment_id=payment.pk, amount="50.00", reason="x")
    assert exc.value.code == BillingErrorCode.FAPIAO_RED_LETTER_REQUIRED
    assert not payment.refunds.exists()
    red(user, invoice, amount="50.00", net="47.17", tax="2.83")
    payments.refund_create(actor=operator, payment_id=payment.pk, amount="50.00", reason="x")
    assert payment.refunds.count() == 1


def test_the_finance_page_records_a_red_letter_and_shows_refusals(issued):
    world, invoice, request = issued
    user = issuer()
    record(request, user)
    client = Client()
    client.force_login(user)
    form = {
        "original": NUMBER,
        "invoice": invoice.number,
        "number": RED,
        "issued_on": timezone.localdate().isoformat(),
        "amount": "300.00",
        "net": "283.02",
        "tax": "16.98",
        "reason": "refund",
    }
    bad = client.post("/finance/fapiao/red-letter/", form)
    assert bad.status_code == 422
    assert "250.00" in bad.content.decode()
    good = client.post(
        "/finance/fapiao/red-letter/", {**form, "amount": "40.00", "net": "37.74", "tax": "2.26"}
    )
    assert good.status_code == 302
    assert RedLetterFapiao.objects.get().number == RED
    customer = Client()
    customer.force_login(world.owner)
    assert RED in customer.get(f"/billing/fapiao/{request.pk}/").content.decode()
