"""Invoice admin for finance staff: read-only rows, actions and forms through the services."""

from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core import mail
from django.test import Client

from billing.invoicing import services as invoicing
from billing.models import Invoice, LedgerEntry
from tests import factories
from tests.factories.billing import (
    AFTER_CLOSE,
    OCT,
    OCT_START,
    close_through,
    issued,
    running_hours,
)

pytestmark = pytest.mark.django_db
BASE = "/admin/billing/invoice/"


@pytest.fixture
def staff():
    client = Client()
    client.force_login(factories.user(is_staff=True, is_superuser=True))
    return client


def test_list_filters_search_detail_and_pdf(world, staff):
    invoice = issued(world)
    page = staff.get(BASE)
    assert page.status_code == 200 and invoice.number in page.content.decode()
    for query in [
        "?month=2026-10",
        "?status__exact=finalized",
        "?currency__exact=USD",
        "?kind__exact=invoice",
        f"?q={invoice.number}",
        f"?organization__id__exact={world.org.pk}",
    ]:
        response = staff.get(BASE + query)
        assert response.status_code == 200 and invoice.number in response.content.decode(), query
    assert invoice.number not in staff.get(BASE + "?month=2026-09").content.decode()
    detail = staff.get(f"{BASE}{invoice.pk}/change/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "gpu_1x_h200 in us-east-1" in body and "Mark paid" in body and "Credit note" in body
    pdf = staff.get(f"{BASE}{invoice.pk}/pdf/")
    assert pdf["Content-Type"] == "application/pdf" and pdf.content == bytes(invoice.pdf)
    assert f'filename="{invoice.number}.pdf"' in pdf["Content-Disposition"]


def test_finalize_and_resend_actions(world, staff, django_capture_on_commit_callbacks):
    running_hours(world.org, world, OCT_START, 2)
    close_through(invoicing.month_bounds(OCT)[1])
    draft = invoicing.invoice_draft_refresh(world.org, OCT)
    with (
        time_machine.travel(AFTER_CLOSE, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        staff.post(BASE, {"action": "finalize_selected", "_selected_action": [draft.pk]})
    draft.refresh_from_db()
    assert draft.number == "INV-2026-000001" and draft.status == "paid"
    assert len(mail.outbox) == 2
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(BASE, {"action": "resend_selected", "_selected_action": [draft.pk]})
    assert len(mail.outbox) == 4


def test_mark_paid_void_and_credit_note_forms(world, staff):
    invoice = issued(world)
    page = staff.post(BASE, {"action": "mark_paid", "_selected_action": [invoice.pk]})
    assert page.status_code == 302 and page["Location"].endswith(f"{invoice.pk}/mark-paid/")
    assert staff.get(f"{BASE}{invoice.pk}/mark-paid/").status_code == 200
    form = staff.get(f"{BASE}{invoice.pk}/credit-note/")
    notes = form.context["form"].initial["notes"]
    for _ in range(2):  # a double submit issues one credit note
        staff.post(
            f"{BASE}{invoice.pk}/credit-note/",
            {"amount": "5.00", "reason": "Outage", "notes": notes},
        )
    assert Invoice.objects.filter(kind="credit_note").count() == 1
    invoice.refresh_from_db()
    assert invoice.amount_due == Decimal("36.00")
    response = staff.post(
        f"{BASE}{invoice.pk}/mark-paid/", {"reference": "BANK-42", "paid_on": "2026-11-20"}
    )
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.paid_reference == "BANK-42"
    assert invoice.paid_at.date().isoformat() == "2026-11-20"
    assert LedgerEntry.objects.get(idempotency_key=f"invoice-paid:{invoice.pk}").amount == Decimal(
        "36.00"
    )
    again = staff.post(f"{BASE}{invoice.pk}/void/", {"reason": "too late"})
    assert again.status_code == 200 and "already paid" in again.content.decode()


def test_void_form(world, staff):
    invoice = issued(world)
    staff.post(f"{BASE}{invoice.pk}/void/", {"reason": "Wrong organisation"})
    invoice.refresh_from_db()
    assert invoice.status == "void" and invoice.note == "Void: Wrong organisation"


def test_staff_without_the_permission_can_look_but_not_act(world):
    invoice = issued(world)
    viewer = factories.user(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    client = Client()
    client.force_login(viewer)
    assert client.get(BASE).status_code == 200
    assert client.get(f"{BASE}{invoice.pk}/pdf/").status_code == 200
    assert client.get(f"{BASE}{invoice.pk}/mark-paid/").status_code == 403
    assert client.post(f"{BASE}{invoice.pk}/void/", {"reason": "x"}).status_code == 403
    invoice.refresh_from_db()
    assert invoice.status == "finalized"
    assert client.get("/admin/billing/account/").status_code == 403  # no view permission there
