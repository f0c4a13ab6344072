"""Credit terms: customers request monthly invoicing, finance grants, changes and revokes it in
admin (audited), and an invoiced organisation launches only within its credit limit."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core import mail
from django.test import Client

from billing.models import AlertKind, BillingProfile, CreditRequest, Invoice, SpendAlert
from billing.spend import credit_terms
from billing.spend import services as spend
from portal.accounts.models import AuditEvent
from portal.accounts.types import Actor
from portal.compute import services as compute
from portal.compute.models import Instance
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests import factories
from tests.concurrency import at_once
from tests.factories import World

pytestmark = pytest.mark.django_db
START = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
REQUEST = {
    "company_name": "Hangzhou Lingxi AI Co., Ltd.",
    "registration_number": "91330106MA2H0B2X4K",
    "address": "Xihu District, Hangzhou",
    "contact_name": "Li Na",
    "contact_email": "finance@lingxi.example",
    "contact_phone": "+86 571 0000 0000",
    "expected_monthly_spend": "20000",
    "note": "Training runs of about 64 H200 each month.",
}


def _world(**org_fields) -> World:
    with time_machine.travel(START - timedelta(days=1), tick=False):
        return World(**org_fields)


def finance_user(**extra):
    user = factories.user(is_staff=True, **extra)
    for codename in ("grant_credit", "view_creditrequest", "view_billingprofile"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def finance_actor(org):
    return Actor.for_operator(finance_user(), org)


def _launch(world: World, name: str = "box") -> Instance:
    instance, _ = compute.instance_launch(actor=world.actor(), request=world.request(name=name))
    compute.instance_sync(instance_id=instance.pk)
    return Instance.objects.get(pk=instance.pk)


def _invoiced(world: World, limit: str, days: int = 30) -> None:
    asked = credit_terms.credit_request_create(actor=world.actor(), **REQUEST)
    credit_terms.credit_terms_grant(
        actor=finance_actor(world.org),
        request_id=asked.pk,
        credit_limit=limit,
        payment_terms_days=days,
    )
    world.org.refresh_from_db()


def test_a_customer_requests_monthly_invoicing_from_the_billing_page(memory_backend):
    world = _world(credit_amount=None)
    client = Client()
    client.force_login(world.owner)
    page = client.get("/billing/").content.decode()
    assert 'href="/billing/monthly-invoicing/"' in page
    form = client.get("/billing/monthly-invoicing/")
    assert form.status_code == 200 and "Expected monthly spend" in form.content.decode()
    bad = client.post("/billing/monthly-invoicing/", {**REQUEST, "expected_monthly_spend": "-5"})
    assert bad.status_code == 422 and "The amount must be positive." in bad.content.decode()
    assert not CreditRequest.objects.exists()
    sent = client.post("/billing/monthly-invoicing/", REQUEST)
    assert sent.status_code == 302
    asked = CreditRequest.objects.get()
    assert (asked.status, asked.currency, asked.expected_monthly_spend) == (
        "pending",
        "USD",
        Decimal("20000.00"),
    )
    assert asked.requested_by == world.owner
    assert AuditEvent.objects.filter(action="billing.credit_request", target_id=str(asked.pk))
    page = client.get("/billing/").content.decode()
    assert "is waiting for finance" in page
    world.org.refresh_from_db()
    assert world.org.billing_mode == "prepaid"  # asking changes nothing
    # the API sees the request and refuses a second one while it waits
    api = factories.api_client_for(world.org, "billing")
    listed = api.get("/api/v1/credit-requests").json()["results"]
    assert [row["status"] for row in listed] == ["pending"]
    again = api.post("/api/v1/credit-requests", REQUEST, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "credit_request_pending"
    # withdrawn, it can be asked again, through the API this time
    assert client.post(f"/billing/monthly-invoicing/{asked.pk}/withdraw/").status_code == 302
    created = api.post("/api/v1/credit-requests", REQUEST, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["status"] == "pending"


def test_only_finance_staff_grant_credit_terms(memory_backend):
    world = _world()
    asked = credit_terms.credit_request_create(actor=world.actor(), **REQUEST)
    not_finance = Actor.for_operator(factories.user(is_staff=True), world.org)
    for actor in (world.actor(), Actor.system(world.org), not_finance):
        with pytest.raises(PermissionDenied):
            credit_terms.credit_terms_grant(
                actor=actor, request_id=asked.pk, credit_limit="5000", payment_terms_days=30
            )
    world.org.refresh_from_db()
    assert world.org.billing_mode == "prepaid"
    with pytest.raises(InvalidInput) as caught:
        credit_terms.credit_terms_grant(
            actor=finance_actor(world.org),
            request_id=asked.pk,
            credit_limit="5000",
            payment_terms_days=365,
        )
    assert "payment_terms_days" in caught.value.details


def test_finance_grants_changes_and_revokes_in_admin_and_each_step_is_audited(memory_backend):
    world = _world()
    asked = credit_terms.credit_request_create(actor=world.actor(), **REQUEST)
    staff = Client()
    staff.force_login(finance_user())
    listing = staff.get("/admin/billing/creditrequest/").content.decode()
    assert "Hangzhou Lingxi AI" in listing and "Grant…" in listing
    grant_url = f"/admin/billing/creditrequest/{asked.pk}/grant/"
    page = staff.get(grant_url).content.decode()
    assert "Expected spend 20,000.00 USD a month" in page
    granted = staff.post(
        grant_url, {"credit_limit": "15000", "payment_terms_days": "45", "note": "KYC ok"}
    )
    assert granted.status_code == 302
    world.org.refresh_from_db()
    profile = BillingProfile.objects.get(organization=world.org)
    assert world.org.billing_mode == "invoiced"
    assert (profile.credit_limit, profile.payment_terms_days) == (Decimal("15000.00"), 45)
    asked.refresh_from_db()
    assert (asked.status, asked.granted_limit, asked.decision_note) == (
        "granted",
        Decimal("15000.00"),
        "KYC ok",
    )
    # granted once: a second grant of the same request is refused on the form
    again = staff.post(grant_url, {"credit_limit": "99999", "payment_terms_days": "45"})
    assert again.status_code == 200 and "granted already" in again.content.decode()
    change_url = f"/admin/billing/billingprofile/{profile.pk}/credit-terms/"
    assert (
        staff.post(change_url, {"credit_limit": "25000", "payment_terms_days": "30"}).status_code
        == 302
    )
    profile.refresh_from_db()
    assert profile.credit_limit == Decimal("25000.00")
    revoke_url = f"/admin/billing/billingprofile/{profile.pk}/credit-revoke/"
    assert staff.post(revoke_url, {"reason": ""}).status_code == 200  # a reason is required
    assert staff.post(revoke_url, {"reason": "Late payments"}).status_code == 302
    world.org.refresh_from_db()
    profile.refresh_from_db()
    assert world.org.billing_mode == "prepaid" and profile.credit_limit is None
    trail = list(
        AuditEvent.objects.filter(organization=world.org, action__startswith="billing.credit")
        .order_by("id")
        .values_list("action", "details")
    )
    assert [action for action, _ in trail] == [
        "billing.credit_request",
        "billing.credit_terms_grant",
        "billing.credit_terms_change",
        "billing.credit_terms_revoke",
    ]
    assert trail[1][1]["credit_limit"] == "15000.00"
    assert trail[2][1]["before"]["credit_limit"] == "15000.00"
    assert trail[2][1]["after"] == {"credit_limit": "25000.00", "payment_terms_days": 30}
    assert trail[3][1]["reason"] == "Late payments"
    assert AuditEvent.objects.filter(action="billing.credit_terms_grant").get().actor_user
    # a staff member without the permission cannot reach the forms
    plain = Client()
    plain.force_login(factories.user(is_staff=True))
    assert plain.get(change_url).status_code == 403


def test_customers_cannot_make_themselves_invoiced(memory_backend):
    """Neither settings nor the organisation admin's form switch the billing mode."""
    world = _world()
    client = Client()
    client.force_login(world.owner)
    client.post(
        "/settings/",
        {"name": world.org.name, "billing_email": "b@example.com", "country": "DE",
         "currency": "USD", "billing_mode": "invoiced"},
    )  # fmt: skip
    world.org.refresh_from_db()
    assert world.org.billing_mode == "prepaid"
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    page = staff.get(f"/admin/accounts/organization/{world.org.pk}/change/").content.decode()
    assert 'name="billing_mode"' not in page  # read-only: credit terms change it, audited


def test_a_launch_beyond_the_credit_limit_is_refused(memory_backend):
    world = _world(credit_amount=None)
    _invoiced(world, "10")  # gpu_1x_h200 is 3.50 an hour; the reserve window is an hour
    with time_machine.travel(START, tick=False):
        assert _launch(world, "one").state == "running"
        assert _launch(world, "two").state == "running"  # 7.00 of 10.00 reserved
        with pytest.raises(spend.PaymentRequired) as refused:
            _launch(world, "three")
    assert refused.value.code == "credit_limit_reached" and refused.value.status == 402
    assert refused.value.details == {
        "credit_limit": "10.00",
        "exposure": "7.00",
        "unpaid_invoices": "0.00",
        "usage_not_invoiced": "0.00",
        "credit_held": "0.00",
        "reserved": "7.00",
        "needed": "3.50",
        "currency": "USD",
        "billing_url": "/billing/",
    }
    assert Instance.objects.filter(organization=world.org).count() == 2
    # an unpaid invoice counts too: with the limit raised to 20, 8.00 owed leaves room for one
    with time_machine.travel(START + timedelta(minutes=1), tick=False):
        credit_terms.credit_terms_change(
            actor=finance_actor(world.org),
            organization_id=world.org.pk,
            credit_limit="20",
            payment_terms_days=30,
        )
        Invoice.objects.create(
            organization=world.org, period_start="2026-05-01", period_end="2026-06-01",
            currency="USD", billing_mode="invoiced", status="finalized", number="INV-2026-000009",
            tax_status="standard", subtotal=8, total=8, amount_due=8,
            issued_at=START - timedelta(hours=1), due_at=START + timedelta(days=29),
        )  # fmt: skip
        from billing.ledger.services import ledger_post

        ledger_post(
            organization=world.org, kind="usage", amount="-8", idempotency_key="may-usage",
            description="May usage", actor_label="tests",
        )  # fmt: skip
        current = credit_terms.exposure(world.org)
        assert current.unpaid_invoices == Decimal(8)
        assert current.usage_not_invoiced < Decimal("0.20")  # the minute the two ran
        assert _launch(world, "three").state == "running"  # 8 + 0.12 + 7 + 3.50 <= 20
        with pytest.raises(spend.PaymentRequired) as refused:
            _launch(world, "four")
        assert refused.value.code == "credit_limit_reached"
        assert refused.value.details["unpaid_invoices"] == "8.00"
        current = credit_terms.exposure(world.org)
    api = factories.api_client_for(world.org, "billing")
    with time_machine.travel(START + timedelta(minutes=1), tick=False):
        body = api.get("/api/v1/balance").json()
    assert body["billing_mode"] == "invoiced" and body["credit_limit"] == "20.00"
    assert Decimal(body["exposure"]) == current.total.quantize(Decimal("1e-12"))
    page = Client()
    page.force_login(world.owner)
    with time_machine.travel(START + timedelta(minutes=1), tick=False):
        html = page.get("/billing/").content.decode()
    assert "Monthly invoicing" in html and "20.00 USD" in html and "8.00 USD" in html


def test_an_invoiced_organisation_without_a_limit_cannot_launch(memory_backend):
    world = _world(credit_amount=None, billing_mode="invoiced", credit_limit=None)
    with time_machine.travel(START, tick=False), pytest.raises(spend.PaymentRequired) as refused:
        _launch(world)
    assert refused.value.code == "credit_limit_reached"
    assert "No credit limit is granted" in refused.value.message


def test_notices_at_80_and_100_percent_of_the_credit_limit_once_a_month(
    memory_backend, django_capture_on_commit_callbacks
):
    world = _world(credit_amount=None)
    _invoiced(world, "20")
    with time_machine.travel(START, tick=False) as clock:
        _launch(world)  # 3.50/h reserved
        mail.outbox.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert spend.watch_organization(world.org) == []
            clock.move_to(START + timedelta(hours=1, minutes=30))  # 5.25 + 3.50 = 8.75: 44 %
            assert spend.watch_organization(world.org) == []
            clock.move_to(START + timedelta(hours=3, minutes=30))  # 12.25 + 3.50 = 15.75: 79 %
            assert spend.watch_organization(world.org) == []
            clock.move_to(START + timedelta(hours=3, minutes=45))  # 13.13 + 3.50 = 16.63: 83 %
            assert spend.watch_organization(world.org) == ["credit limit 80 %"]
            assert spend.watch_organization(world.org) == []
            assert "80 %" in spend.banner(world.org).message
            clock.move_to(START + timedelta(hours=5))  # 17.50 + 3.50 = 21.00
            assert spend.watch_organization(world.org) == ["credit limit 100 %"]
            assert spend.watch_organization(world.org) == []
        assert "credit limit is reached" in spend.banner(world.org).message
        with pytest.raises(spend.PaymentRequired):
            _launch(world, "second")
    subjects = [m.subject for m in mail.outbox if m.to == [world.owner.email]]
    assert subjects == [
        f"80 % of the credit limit — {world.org.name}",
        f"Credit limit reached — {world.org.name}",
    ]
    assert "21.00 USD of 20.00 USD is owed or reserved" in mail.outbox[-1].body
    # running instances keep running: an invoiced customer is not cut off, only refused more
    assert Instance.objects.get(name="box").state == "running"
    # a higher limit re-arms the notices
    credit_terms.credit_terms_change(
        actor=finance_actor(world.org),
        organization_id=world.org.pk,
        credit_limit="1000",
        payment_terms_days=30,
    )
    assert not SpendAlert.objects.filter(
        organization=world.org, kind__in=[AlertKind.CREDIT_LIMIT, AlertKind.CREDIT_LIMIT_80]
    ).exists()


def test_a_declined_request_leaves_the_organisation_prepaid(memory_backend):
    world = _world()
    asked = credit_terms.credit_request_create(actor=world.actor(), **REQUEST)
    credit_terms.credit_request_decline(
        actor=finance_actor(world.org), request_id=asked.pk, note="Not enough history"
    )
    world.org.refresh_from_db()
    asked.refresh_from_db()
    assert world.org.billing_mode == "prepaid" and asked.status == "declined"
    with pytest.raises(Conflict) as caught:
        credit_terms.credit_terms_grant(
            actor=finance_actor(world.org),
            request_id=asked.pk,
            credit_limit="10",
            payment_terms_days=30,
        )
    assert caught.value.code == "credit_request_decided"
    assert AuditEvent.objects.filter(action="billing.credit_request_decline").exists()


@pytest.mark.django_db(transaction=True)
def test_20_concurrent_launches_within_a_limit_for_3_give_exactly_3(
    require_postgres, memory_backend, settings
):
    settings.DEFAULT_GPU_QUOTA = 100
    world = _world(credit_amount=None)
    _invoiced(world, "10.50")  # three hours of one H200
    actor = world.actor()
    with time_machine.travel(START, tick=False):
        outcomes = at_once(
            20,
            lambda i: compute.instance_launch(actor=actor, request=world.request(name=f"race-{i}")),
        )
    assert outcomes.count("ok") == 3, outcomes
    assert outcomes.count("credit_limit_reached") == 17
    assert Instance.objects.filter(organization=world.org).count() == 3
