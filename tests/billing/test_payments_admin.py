"""Operators and finance staff: payments, refunds, webhook events, cards and billing profiles in
admin; invoices of invoiced organisations charged to their saved card."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import (
    Invoice,
    LedgerEntry,
    Payment,
    PaymentMethod,
    WebhookEvent,
)
from billing.payments import services as payments
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("events_at_once")]


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(factories.user(is_staff=True, is_superuser=True))
    return client


def _card(org, last4="4242") -> PaymentMethod:
    return PaymentMethod.objects.create(
        organization=org,
        provider="fake",
        provider_id=f"fakepm_visa_{last4}_12_2040_{org.pk}",
        brand="visa",
        last4=last4,
        exp_month=12,
        exp_year=2040,
        is_default=True,
    )


def _paid_top_up(org, amount="80.00") -> Payment:
    payment = payments.charge_saved_card(
        organization=org,
        purpose="top_up",
        amount=Decimal(amount),
        idempotency_key=f"top-up:admin-{org.pk}",
        created_by="test",
    )
    assert payment.status == "succeeded"
    return payment


def test_every_payments_admin_page_loads(staff_client):
    org = factories.organization(credit_amount=None)
    _card(org)
    payment = _paid_top_up(org)
    payments.profile_for(org)
    for model in ("payment", "paymentmethod", "webhookevent", "billingprofile", "spendalert"):
        listing = staff_client.get(f"/admin/billing/{model}/")
        assert listing.status_code == 200, model
        for obj in listing.context["cl"].result_list:
            assert staff_client.get(f"/admin/billing/{model}/{obj.pk}/change/").status_code == 200
        assert staff_client.get(f"/admin/billing/{model}/?q=org").status_code == 200
    assert WebhookEvent.objects.filter(type="payment_intent.succeeded").exists()
    assert "Refund…" in staff_client.get("/admin/billing/payment/").content.decode()
    assert payment.pk


def test_finance_refunds_from_admin_and_the_ledger_follows(staff_client):
    org = factories.organization(credit_amount=None)
    _card(org)
    payment = _paid_top_up(org)
    url = f"/admin/billing/payment/{payment.pk}/refund/"
    assert staff_client.get(url).status_code == 200
    too_much = staff_client.post(url, {"amount": "80.01", "reason": "Too much"})
    assert too_much.status_code == 200 and "can still be refunded" in too_much.content.decode()
    done = staff_client.post(url, {"amount": "20", "reason": "Unused credit"})
    assert done.status_code == 302
    payment.refresh_from_db()
    assert payment.refunded_amount == Decimal("20")
    kinds = sorted(
        (e.kind, e.amount) for e in LedgerEntry.objects.filter(account__organization=org)
    )
    assert kinds == [("refund", Decimal("-20")), ("top_up", Decimal("80"))]
    customer = Client()
    customer.force_login(factories.member(org, "owner"))
    assert customer.get(url).status_code == 302  # to the admin login, not the form


def test_operators_set_tax_terms_but_not_what_customers_choose(staff_client):
    org = factories.organization()
    profile = payments.profile_for(org)
    response = staff_client.post(
        f"/admin/billing/billingprofile/{profile.pk}/change/",
        {"tax_status": "reverse_charge", "tax_rate": "0.19", "payment_terms_days": "14",
         "monthly_spend_limit": "1"},
    )  # fmt: skip
    assert response.status_code == 302
    profile.refresh_from_db()
    assert (profile.tax_status, profile.tax_rate, profile.payment_terms_days) == (
        "reverse_charge",
        Decimal("0.19"),
        14,
    )
    assert profile.monthly_spend_limit is None


def _finalized_invoice(org, total="123.45") -> Invoice:
    now = timezone.now()
    return Invoice.objects.create(
        organization=org, period_start="2026-10-01", period_end="2026-11-01", currency="USD",
        billing_mode="invoiced", status="finalized", number=f"INV-2026-{900000 + org.pk}",
        tax_status="standard", subtotal=Decimal(total), total=Decimal(total),
        amount_due=Decimal(total), issued_at=now, due_at=now + timedelta(days=30),
    )  # fmt: skip


def test_an_invoiced_organisations_invoice_is_charged_to_its_card_once():
    org = factories.organization(billing_mode="invoiced")
    _card(org)
    invoice = _finalized_invoice(org)
    first = payments.invoice_charge(invoice.pk)
    again = payments.invoice_charge(invoice.pk)
    assert first.status == "succeeded" and again is None
    assert Payment.objects.filter(invoice=invoice).count() == 1
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.paid_reference == first.payment_intent_id
    assert LedgerEntry.objects.filter(invoice=invoice, kind="payment").get().amount == Decimal(
        "123.45"
    )


def test_without_a_card_or_with_a_declining_one_the_invoice_waits():
    org = factories.organization(billing_mode="invoiced")
    invoice = _finalized_invoice(org)
    assert payments.invoice_charge(invoice.pk) is None
    _card(org, last4="0341")
    failed = payments.invoice_charge(invoice.pk)
    assert failed.status == "failed"
    invoice.refresh_from_db()
    assert invoice.status == "finalized" and invoice.paid_at is None


def test_reconciliation_matches_payments_and_lists_what_is_unmatched(admin_user):
    import io

    from billing.finance import exports
    from billing.ledger.services import ledger_post
    from portal.accounts.types import Actor

    org = factories.organization(credit_amount=None)
    invoiced = factories.organization(billing_mode="invoiced")
    _card(org)
    _card(invoiced, last4="4444")
    top_up = _paid_top_up(org)
    payments.refund_create(
        actor=Actor.for_operator(admin_user, org), payment_id=top_up.pk, amount="5", reason="x"
    )
    invoice_payment = payments.invoice_charge(_finalized_invoice(invoiced, "50.00").pk)
    declined = Payment.objects.create(
        organization=org, purpose="top_up", amount=Decimal("9"), currency="USD",
        provider="fake", idempotency_key="top-up:declined", status="failed", created_by="t",
    )  # fmt: skip
    ledger_post(
        organization=org, kind="top_up", amount="70", idempotency_key="bank:1",
        description="Bank transfer", actor_label="finance", reference="SEPA-123",
    )  # fmt: skip
    today = timezone.now().date()
    rows = list(exports.reconciliation_rows(today, today))
    by_match = {(r["match"], r["purpose"], r["amount"]) for r in rows}
    assert by_match == {
        ("matched", "top_up", "80.00"),
        ("matched", "invoice", "50.00"),
        ("matched", "refund", "-5.00"),
        ("not_settled", "top_up", "9.00"),
        ("unmatched_ledger", "top_up", ""),
    }
    orphan = next(r for r in rows if r["match"] == "unmatched_ledger")
    assert (orphan["provider_reference"], orphan["settled_amount"]) == ("SEPA-123", "70.00")
    assert all(r["difference"] in ("0.00", "") for r in rows if r["match"] == "matched")
    assert (invoice_payment.status, declined.status) == ("succeeded", "failed")
    buffer = io.StringIO()
    assert exports.write_csv(rows, exports.RECONCILIATION_COLUMNS, buffer) == len(rows)
    assert buffer.getvalue().splitlines()[0].startswith("date,match,provider,")
