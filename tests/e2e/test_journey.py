"""A new customer's whole journey, as people in a browser, from signing up to the invoice PDF.

Ada signs up, confirms her email, creates her organisation, adds an SSH key, tops up with the
fake provider's test card, picks a type in the catalog and launches it; the instance page
follows it to running by itself. With the clock moved on (time-machine, ticking), usage and
cost accrue on the usage and billing pages as metering closes the hours and billing debits
them; she stops and terminates the instance; the month is closed and she downloads the invoice
PDF, whose number and total are the invoice's. Then a billing member of her organisation finds
the staff finance area closed and only their own invoices; and the owner of another
organisation sees nothing of hers, and gets 404 for her instance and invoice addresses.

The clock starts at 20:00 UTC on the last day of next month (a moment in the future, so the
month can be closed a few hours later without the sessions expiring). While the instances move,
Celery tasks go to an embedded worker thread (as in ``test_instances.py``): the simulated backend
takes ``BOOT_SECONDS`` to boot, and the page has to see that happen on its own. The rest of the
journey runs with the suite's eager tasks (the top-up's webhook event is applied on commit).
"""

import io
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import Dialog, Page, expect

from billing.ledger import services as billing_services
from billing.models import Invoice, LedgerEntry, WebhookEvent
from billing.tasks import debit_usage
from portal.accounts import services as account_services
from portal.accounts.models import AuditEvent, Organization, SshKey
from portal.catalog.demo import load_demo_catalog
from portal.compute import services as compute_services
from portal.compute.models import Instance
from portal.metering.selectors import usage_summary
from portal.metering.tasks import close_recent_hours
from tests import factories
from tests.e2e.helpers import (
    assert_no_reload,
    background_worker,
    emailed_link,
    mark_document,
)

pytestmark = pytest.mark.browser

EMAIL = "ada@lovelace.example"
PASSWORD = "gpu-portal-journey-Passw0rd"
ORG_NAME = "Analytical Engines"
KEY_NAME = "ada-laptop"
INSTANCE = "first-light"
INSTANCE_TYPE = "gpu_1x_h200_sxm"
REGION = "us-east-1"
TOP_UP = Decimal("100.00")
BILLING_EMAIL = "charles@lovelace.example"
OTHER_EMAIL = "grace@other.example"
OTHER_ORG = "Other Compilers"

BOOT_SECONDS = 3
STOP_SECONDS = 1
SETTLE_MS = 15_000  # how long a page may take to show a state the worker reaches
MONEY = re.compile(r"^-?[\d,]+\.\d\d USD$")


def money(text: str) -> Decimal:
    """'1,234.56 USD' -> Decimal('1234.56')."""
    assert MONEY.match(text.strip()), text
    return Decimal(text.strip().removesuffix(" USD").replace(",", ""))


def cents(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):,.2f} USD"


def journey_start(now: datetime) -> datetime:
    """20:00 UTC on the last day of next month."""
    first_of_next = (now.date().replace(day=1) + timedelta(days=32)).replace(day=1)
    month_after = (first_of_next + timedelta(days=32)).replace(day=1)
    return datetime.combine(month_after, datetime.min.time(), tzinfo=UTC) - timedelta(hours=4)


def log_in(page: Page, base: str, email: str, password: str = factories.PASSWORD) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")


def log_out(page: Page, base: str) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base}/login/")


def invoices_table(page: Page):
    """The billing page's invoice list."""
    return page.locator(".panel").filter(has=page.get_by_role("heading", name="Invoices"))


def pdf_text(body: bytes, tmp_path: Path) -> str:
    path = tmp_path / "invoice.pdf"
    path.write_bytes(body)
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout


def wait_for_state(instance: Instance, state: str, timeout: float = SETTLE_MS / 1000) -> None:
    """Wait for the worker to bring an instance (not on screen) to ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instance.refresh_from_db()
        if instance.state == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{instance.name} is {instance.state}, not {state}")


def month_usage(org: Organization, month_start: datetime) -> Decimal:
    """What the usage page's total adds up for the month so far, at full precision."""
    now = timezone.now()
    return usage_summary(
        organization=org, start=month_start, end=now + timedelta(seconds=1), now=now
    ).total_cost


def test_journey(
    live_server, transactional_db, settings, simulated_backend, page: Page, screenshot, tmp_path
):
    settings.SITE_URL = live_server.url  # emailed links point at this server
    settings.COMPUTE_POLL_SECONDS = 0.5
    simulated_backend(boot_seconds=BOOT_SECONDS, stop_seconds=STOP_SECONDS)
    base = live_server.url
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    start = journey_start(timezone.now())
    month_start = start.replace(day=1, hour=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)

    with time_machine.travel(start, tick=True) as clock:
        load_demo_catalog()
        # Another organisation, whose owner comes in at the end.
        other_org = factories.organization(OTHER_ORG, currency="USD")
        other_owner = factories.user(OTHER_EMAIL, email_verified_at=timezone.now())
        factories.member(other_org, "owner", other_owner)
        other_key = account_services.ssh_key_create(
            actor=factories.actor(other_org, other_owner),
            name="grace-desktop",
            public_key=factories.ed25519_public_key("grace@desktop"),
        )

        # --- sign up, confirm the email address ---------------------------------------------
        page.goto(f"{base}/signup/")
        expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
        page.get_by_label("Full name").fill("Ada Lovelace")
        page.get_by_label("Email").fill(EMAIL)
        page.get_by_label("Password").fill(PASSWORD)
        screenshot("signup")
        page.get_by_role("button", name="Sign up").click()
        expect(page).to_have_url(f"{base}/organizations/new/")
        expect(page.get_by_text(f"We sent a confirmation link to {EMAIL}")).to_be_visible()

        page.goto(emailed_link(EMAIL))
        expect(page.get_by_role("heading", name="Email confirmed")).to_be_visible()
        expect(page.get_by_text(f"Thank you, {EMAIL} is confirmed.")).to_be_visible()
        screenshot("email-confirmed")
        page.get_by_role("link", name="Continue").click()

        # --- create the organisation --------------------------------------------------------
        expect(page).to_have_url(f"{base}/organizations/new/")
        expect(page.get_by_text("Please confirm your email address")).to_have_count(0)
        page.get_by_label("Organisation name").fill(ORG_NAME)
        page.get_by_label("Country").select_option("DE")
        page.get_by_label("Currency").select_option("USD")
        screenshot("organisation")
        page.get_by_role("button", name="Create organisation").click()
        expect(page).to_have_url(f"{base}/")
        expect(page.get_by_role("heading", name=ORG_NAME, level=1)).to_be_visible()
        expect(page.get_by_text("Your role: Owner")).to_be_visible()
        org = Organization.objects.get(name=ORG_NAME)
        screenshot("dashboard")
        main_nav = page.get_by_role("navigation", name="Main")

        # --- add an SSH key -----------------------------------------------------------------
        main_nav.get_by_role("link", name="SSH keys").click()
        expect(page.get_by_text("No SSH keys yet.")).to_be_visible()
        page.get_by_label("Name").fill(KEY_NAME)
        page.get_by_label("Public key").fill(factories.ed25519_public_key("ada@laptop"))
        page.get_by_role("button", name="Add key").click()
        expect(page.get_by_text(f"SSH key {KEY_NAME} added.")).to_be_visible()
        key = SshKey.objects.get(organization=org)
        expect(page.get_by_role("row").filter(has_text=KEY_NAME)).to_contain_text(key.fingerprint)
        screenshot("ssh-key")

        # --- a launch without credit is refused, with the way to the top-up --------------------
        page.goto(f"{base}/instances/launch/?type={INSTANCE_TYPE}")
        page.get_by_label("Region").select_option(REGION)
        page.get_by_label("Name", exact=True).fill(INSTANCE)
        page.get_by_role("button", name="Launch instance").click()
        expect(page.get_by_role("main")).to_contain_text(f"Not enough credit for {INSTANCE_TYPE}")
        expect(page.get_by_role("main")).to_contain_text("Top up at least")
        assert not Instance.objects.filter(organization=org).exists()
        screenshot("launch-refused-for-credit")
        page.locator(".form-error").get_by_role("link", name="Top up credit").click()
        expect(page).to_have_url(f"{base}/billing/")

        # --- top up with a test card: the credit comes with the provider's signed event -------
        expect(page.get_by_test_id("balance")).to_have_text("0.00 USD")
        page.get_by_label("Amount").fill(str(TOP_UP))
        page.get_by_role("button", name="Continue to payment").click()
        expect(page.get_by_role("heading", name="Test checkout")).to_be_visible()
        page.get_by_label("Card number").fill("4242 4242 4242 4242")
        page.get_by_label("Expiry (MM/YY)").fill("12/40")
        page.get_by_label("CVC").fill("123")
        screenshot("checkout")
        page.get_by_role("button", name=f"Pay {TOP_UP} USD").click()
        expect(page.get_by_text("Your payment is confirmed")).to_be_visible()
        expect(page.locator("#payment-list tbody tr").first).to_contain_text("Succeeded")
        page.get_by_role("link", name="← Billing").click()
        expect(page.get_by_test_id("balance")).to_have_text(cents(TOP_UP))
        expect(page.locator("table").last).to_contain_text("Top-up paid by card")
        credit = LedgerEntry.objects.get(account__organization=org)
        assert credit.amount == TOP_UP and credit.kind == "top_up"
        event = WebhookEvent.objects.get(provider="fake", type="checkout.session.completed")
        assert event.processed_at is not None, event.outcome
        screenshot("billing-topped-up")

        with background_worker():
            # The other organisation runs an instance meanwhile (its own invoice comes of it).
            other, _ = compute_services.instance_launch(
                actor=factories.actor(other_org, other_owner),
                request=compute_services.LaunchRequest(
                    name="other-llm",
                    instance_type=INSTANCE_TYPE,
                    region=REGION,
                    ssh_key_ids=(other_key.pk,),
                ),
            )

            # --- browse the catalog and launch ----------------------------------------------
            main_nav.get_by_role("link", name="Catalog").click()
            expect(page.get_by_role("heading", name="GPU instances")).to_be_visible()
            page.get_by_label("GPU", exact=True).select_option("h200-sxm-141gb")
            offer = page.locator("#offer-list article").filter(
                has=page.get_by_role("heading", name=INSTANCE_TYPE, exact=True)
            )
            expect(offer).to_be_visible()
            screenshot("catalog")
            offer.get_by_role("link", name="Launch").click()
            expect(page).to_have_url(f"{base}/instances/launch/?type={INSTANCE_TYPE}")
            expect(page.get_by_label("Instance type")).to_have_value(INSTANCE_TYPE)
            page.get_by_label("Region").select_option(REGION)
            hourly = page.get_by_test_id("price-hourly")
            expect(hourly).to_have_text(MONEY)
            price = money(hourly.inner_text())
            expect(page.get_by_label(KEY_NAME)).to_be_checked()  # the only key
            page.get_by_label("Name", exact=True).fill(INSTANCE)
            screenshot("launch")
            page.get_by_role("button", name="Launch instance").click()

            # --- the instance page follows it to running, without a reload ------------------
            expect(page.get_by_text(f"Launching {INSTANCE}.")).to_be_visible()
            instance = Instance.objects.get(organization=org, name=INSTANCE)
            expect(page).to_have_url(f"{base}/instances/{instance.pk}/")
            mark_document(page)
            status = page.locator("#instance-status")
            badge = status.locator(".badge.state")
            expect(badge).to_have_text(re.compile("Pending|Provisioning"))
            expect(status).to_contain_text("This updates by itself")
            screenshot("instance-provisioning")
            expect(badge).to_have_text("Running", timeout=SETTLE_MS)
            # the command to log in, exactly as the page shows it to copy
            ssh = page.locator("#ssh-command")
            expect(ssh).to_have_text(re.compile(r"^ssh \w+@10\.64\.\d+\.\d+$"))
            instance.refresh_from_db()
            assert ssh.inner_text() == instance.ssh_command == f"ssh ubuntu@{instance.ip_address}"
            expect(page.locator("#instance-status[hx-trigger]")).to_have_count(0)
            assert_no_reload(page)
            screenshot("instance-running")

            # --- an hour later: the usage page shows what it cost so far ---------------------
            clock.move_to(start + timedelta(hours=1))
            main_nav.get_by_role("link", name="Usage").click()
            total = page.get_by_test_id("usage-total")
            expect(total).to_have_text(MONEY)
            first_hour = money(total.inner_text())
            assert price * Decimal("0.95") < first_hour < price * Decimal("1.01"), first_hour
            expect(page.locator("#by-instance")).to_contain_text(INSTANCE)
            screenshot("usage-one-hour")

            # --- 22:30: metering closes the ended hours and billing debits them -------------
            clock.move_to(start + timedelta(hours=2, minutes=30))
            assert close_recent_hours() > 0  # the 20:00 and 21:00 hours
            debit_usage()
            debits = LedgerEntry.objects.filter(account__organization=org, kind="usage")
            assert debits.count() == 2  # one per closed hour
            main_nav.get_by_role("link", name="Billing").click()
            balance = money(page.get_by_test_id("balance").inner_text())
            assert TOP_UP - price * Decimal("2.51") < balance < TOP_UP - price * 2, balance
            expect(page.locator("table").last).to_contain_text(f"instance {instance.pk}")
            screenshot("billing-usage-debited")
            main_nav.get_by_role("link", name="Usage").click()
            later = money(page.get_by_test_id("usage-total").inner_text())
            assert later > first_hour + 5 * price / 4, (later, first_hour)
            screenshot("usage-accrued")

            # --- stop it (confirmed), then terminate it (its name typed) --------------------
            main_nav.get_by_role("link", name="Instances").click()
            page.locator(f"#instance-row-{instance.pk}").get_by_role("link", name=INSTANCE).click()
            expect(page).to_have_url(f"{base}/instances/{instance.pk}/")
            mark_document(page)
            status.get_by_role("button", name="Stop").click()
            expect(page.get_by_text(f"Stopping {INSTANCE}.")).to_be_visible()
            expect(badge).to_have_text("Stopped", timeout=SETTLE_MS)
            assert dialogs[-1].startswith(f"Stop {INSTANCE}?"), dialogs
            # stopped, it is released in 15 days unless started: the page counts down
            instance.refresh_from_db()
            release = f"{instance.release_at:%-d %b %Y, %H:%M} UTC"
            expect(page.locator("#release-countdown")).to_have_text(
                f"Released in 14 days 23 hours, on {release}. "
                "Start it to keep it; volumes are kept."
            )
            expect(page.locator("#ssh-command")).to_have_count(0)
            screenshot("instance-stopped")
            page.get_by_label(f"Type {INSTANCE} to terminate it").fill(INSTANCE)
            page.get_by_role("button", name="Terminate").click()
            expect(page.get_by_text(f"Terminating {INSTANCE}.")).to_be_visible()
            expect(badge).to_have_text("Terminated", timeout=SETTLE_MS)
            assert_no_reload(page)
            screenshot("instance-terminated")

            compute_services.instance_action(
                actor=factories.actor(other_org, other_owner),
                instance_id=other.pk,
                action="terminate",
            )
            wait_for_state(other, "terminated")

        # --- what the month cost: the usage page and the billing page agree ------------------
        spent = month_usage(org, month_start)
        main_nav.get_by_role("link", name="Usage").click()
        expect(page.get_by_test_id("usage-total")).to_have_text(cents(spent))
        screenshot("usage-final")
        main_nav.get_by_role("link", name="Billing").click()
        expect(page.get_by_test_id("balance")).to_have_text(cents(billing_services.balance(org)))
        assert billing_services.balance(org).quantize(Decimal("0.01")) == (TOP_UP - spent).quantize(
            Decimal("0.01")
        )

        # --- the month is closed on the 1st; the invoice and its PDF ----------------------------
        clock.move_to(next_month + timedelta(minutes=15))
        out = io.StringIO()
        call_command("close_month", month=f"{month_start:%Y-%m}", stdout=out)
        invoice = Invoice.objects.get(organization=org, kind="invoice")
        other_invoice = Invoice.objects.get(organization=other_org, kind="invoice")
        assert invoice.number in out.getvalue() and other_invoice.number in out.getvalue()
        assert invoice.period_start == month_start.date()
        assert abs(invoice.subtotal - spent) < Decimal("0.01") * invoice.lines.count()

        page.reload()
        row = invoices_table(page).get_by_role("row").filter(has_text=invoice.number)
        expect(row).to_contain_text(f"{invoice.total} USD")
        expect(page.get_by_text(other_invoice.number)).to_have_count(0)
        screenshot("billing-invoice")
        row.get_by_role("link", name=invoice.number).click()
        expect(page).to_have_url(f"{base}/billing/invoices/{invoice.pk}/")
        expect(page.get_by_role("heading", name=f"Invoice {invoice.number}")).to_be_visible()
        expect(page.locator(".stat")).to_have_text(f"{invoice.total} USD")
        screenshot("invoice")
        pdf_link = page.get_by_role("link", name="Download PDF")
        pdf_url = f"{base}{pdf_link.get_attribute('href')}"
        response = page.request.get(pdf_url)
        assert response.status == 200
        assert response.headers["content-type"] == "application/pdf"
        body = response.body()
        assert body.startswith(b"%PDF"), body[:20]
        text = pdf_text(body, tmp_path)
        assert invoice.number in text
        assert f"{invoice.total:,.2f}" in text, text
        log_out(page, base)

        # --- a billing member: no finance area, only this organisation's invoices -------------
        billing_user = factories.user(BILLING_EMAIL, email_verified_at=timezone.now())
        factories.member(org, "billing", billing_user)
        log_in(page, base, BILLING_EMAIL)
        expect(page.get_by_text("Your role: Billing")).to_be_visible()
        expect(page.get_by_role("banner").get_by_role("link", name="Finance")).to_have_count(0)
        for path in ("/finance/", "/finance/exports/1/", "/finance/exports/1/download"):
            response = page.goto(f"{base}{path}")
            assert response.status == 403, (path, response.status)
            expect(page.get_by_text("The finance area is for finance staff.")).to_be_visible()
        screenshot("billing-member-finance-refused")
        csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
        status_code, text = page.evaluate(
            """async (token) => {
                const response = await fetch("/finance/exports/", {
                    method: "POST",
                    headers: {"X-CSRFToken": token},
                    body: new URLSearchParams({kind: "register", format: "csv"}),
                });
                return [response.status, await response.text()];
            }""",
            csrf,
        )
        assert status_code == 403 and "The finance area is for finance staff." in text
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
        invoice_rows = invoices_table(page).locator("tbody tr")
        expect(invoice_rows).to_have_count(1)
        expect(invoice_rows).to_contain_text(invoice.number)
        expect(page.get_by_text(other_invoice.number)).to_have_count(0)
        screenshot("billing-member-invoices")
        assert page.goto(f"{base}/billing/invoices/{other_invoice.pk}/").status == 404
        log_out(page, base)

        # --- the owner of another organisation sees nothing of this one -----------------------
        log_in(page, base, OTHER_EMAIL)
        expect(page.get_by_role("heading", name=OTHER_ORG, level=1)).to_be_visible()
        other_nav = page.get_by_role("navigation", name="Main")
        other_nav.get_by_role("link", name="Instances").click()
        expect(page.get_by_role("link", name="other-llm")).to_be_visible()
        expect(page.get_by_role("main")).not_to_contain_text(INSTANCE)
        screenshot("other-org-instances")
        other_nav.get_by_role("link", name="Billing").click()
        expect(invoices_table(page).locator("tbody tr")).to_have_count(1)
        expect(invoices_table(page)).to_contain_text(other_invoice.number)
        expect(page.get_by_text(invoice.number)).to_have_count(0)
        other_nav.get_by_role("link", name="SSH keys").click()
        expect(page.get_by_role("row").filter(has_text="grace-desktop")).to_be_visible()
        expect(page.get_by_text(KEY_NAME)).to_have_count(0)
        expect(page.get_by_text(key.fingerprint)).to_have_count(0)
        for path in (
            f"/instances/{instance.pk}/",
            f"/billing/invoices/{invoice.pk}/",
            f"/billing/invoices/{invoice.pk}/pdf/",
        ):
            response = page.goto(f"{base}{path}")
            assert response.status == 404, (path, response.status)
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        screenshot("other-org-not-found")
        assert page.request.get(f"{base}/billing/invoices/{invoice.pk}/pdf/").status == 404

        # --- the other organisation asks for monthly invoicing; finance grants it in admin ----
        page.goto(f"{base}/billing/")
        page.get_by_role("link", name="Request monthly invoicing").click()
        page.get_by_label("Company name").fill("Other Compilers GmbH")
        page.get_by_label("Registration number").fill("HRB 123456")
        page.get_by_label("Registered address").fill("Unter den Linden 1, Berlin")
        page.get_by_label("Finance contact").fill("Grace Hopper")
        page.get_by_label("Contact email").fill(OTHER_EMAIL)
        page.get_by_label("Expected monthly spend").fill("25000")
        screenshot("monthly-invoicing-request")
        page.get_by_role("button", name="Send the request").click()
        expect(page.get_by_text("is waiting for finance")).to_be_visible()
        other_org.refresh_from_db()
        assert other_org.billing_mode == "prepaid"
        log_out(page, base)

        finance = factories.user(
            "finance@gpucloud.example", is_staff=True, email_verified_at=timezone.now()
        )
        finance.user_permissions.add(
            *Permission.objects.filter(
                codename__in=["grant_credit", "view_creditrequest", "view_billingprofile"]
            )
        )
        page.goto(f"{base}/login/")
        page.get_by_label("Email").fill(finance.email)
        page.get_by_label("Password").fill(factories.PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{base}/admin/")  # staff land in admin
        page.goto(f"{base}/admin/billing/creditrequest/")
        page.get_by_role("link", name="Grant…").click()
        expect(page.get_by_role("main")).to_contain_text("Expected spend 25,000.00 USD a month")
        page.get_by_label("Credit limit").fill("20000")
        page.get_by_label("Payment terms days").fill("30")
        screenshot("monthly-invoicing-grant")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text(f"{OTHER_ORG} is invoiced monthly from now on.")).to_be_visible()
        other_org.refresh_from_db()
        assert other_org.billing_mode == "invoiced"
        assert other_org.billing_profile.credit_limit == Decimal("20000.00")
        assert AuditEvent.objects.filter(
            organization=other_org, action="billing.credit_terms_grant", actor_user=finance
        ).exists()
        page.context.clear_cookies()  # the finance session ends

        log_in(page, base, OTHER_EMAIL)
        page.goto(f"{base}/billing/")
        terms = page.get_by_test_id("credit-terms")
        expect(terms).to_contain_text("20,000.00 USD")
        expect(terms).to_contain_text("30 days")
        expect(terms).not_to_contain_text("\u2212")  # credit held shows as such, never negative
        screenshot("monthly-invoicing-granted")
