"""The Content-Security-Policy in a real browser: Chromium reports every script, style, image,
form target or eval the policy blocks on the console ("... violates the following Content
Security Policy directive ..."). The main pages of a customer, the finance area, Django admin and
the API docs are opened and must produce no such message and no script error; htmx must still
work without eval or injected styles (a polled panel swaps in place; a polled panel waits while
the user types into it).
"""

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from playwright.sync_api import ConsoleMessage, Error, Page, Request, expect

from billing.models import Invoice, Payment
from portal.accounts.models import Organization
from portal.catalog.models import InstanceType
from portal.celery import app as celery_app
from portal.compute.models import Instance
from tests import factories

pytestmark = pytest.mark.browser

# Also reported by the page itself, in case a violation is not logged by the browser.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`Content Security Policy violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


class Console:
    """Console messages and uncaught script errors of a page, with the URL they came from."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages: list[str] = []
        page.add_init_script(REPORT_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", self._error)

    def _console(self, message: ConsoleMessage) -> None:
        self.messages.append(f"{self.page.url} [{message.type}] {message.text}")

    def _error(self, error: Error) -> None:
        self.messages.append(f"{self.page.url} [pageerror] {error.message}")

    def problems(self) -> list[str]:
        return [
            m
            for m in self.messages
            if "Content Security Policy" in m or "[pageerror]" in m or "EvalError" in m
        ]


def log_in(page: Page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def visit(page: Page, base: str, path: str) -> None:
    response = page.goto(f"{base}{path}")
    assert response is not None and response.ok, (path, response and response.status)
    assert "default-src 'self'" in response.headers["content-security-policy"], path
    page.wait_for_load_state("load")


def test_pages_work_under_the_csp_without_violations(
    live_server, transactional_db, page: Page, screenshot, settings
):
    # The demo launches an instance; its sync task waits in the in-memory broker instead of
    # running eagerly (and re-enqueueing itself) here.
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        call_command("load_demo_data", stdout=io.StringIO())
    finally:
        celery_app.conf.task_always_eager = eager
    org = Organization.objects.get(slug="demo")
    instance = Instance.objects.filter(organization=org).order_by("pk").first()
    invoice = Invoice.objects.filter(organization=org).order_by("pk").first()
    factories.user("operator@example.com", is_staff=True, is_superuser=True)
    base = live_server.url
    console = Console(page)

    # --- a customer's pages ------------------------------------------------------------------
    log_in(page, base, "demo@example.com", "demo-gpu-cloud")
    for path in [
        "/",
        "/catalog/",
        "/instances/",
        "/instances/launch/",
        f"/instances/{instance.pk}/",
        "/volumes/",
        "/usage/",
        "/billing/",
        "/billing/payments/",
        f"/billing/invoices/{invoice.pk}/",
        "/ssh-keys/",
        "/api-keys/",
        "/members/",
        "/audit/",
        "/settings/",
    ]:
        visit(page, base, path)
    assert console.problems() == [], console.problems()

    # htmx without eval: the launch form updates its price summary in place.
    visit(page, base, "/instances/launch/")
    page.evaluate("window.__e2eDocument = true")
    page.get_by_label("Instance type").select_option(index=2)
    chosen = page.get_by_label("Instance type").input_value()
    expect(page.locator("#price-summary")).to_contain_text(chosen)
    assert page.evaluate("window.__e2eDocument === true"), "the page reloaded instead of htmx"

    # A polled panel swaps in place: the payment list waits for the provider, then shows it.
    payment = Payment.objects.create(
        organization=org,
        purpose="top_up",
        amount="25.00",
        currency=org.currency,
        status="pending",
        provider="fake",
        idempotency_key="csp-e2e",
        checkout_id="cs_csp_e2e",
        created_by="demo@example.com",
    )
    visit(page, base, "/billing/payments/?returned=1")
    page.evaluate("window.__e2eDocument = true")
    panel = page.locator("#payment-list")
    expect(panel).to_contain_text("Waiting for the payment provider")
    Payment.objects.filter(pk=payment.pk).update(
        status="succeeded", succeeded_at=timezone.now(), updated_at=timezone.now()
    )
    expect(panel).to_contain_text("Your payment is confirmed", timeout=8_000)
    expect(page.locator("#payment-list[hx-trigger]")).to_have_count(0)
    assert page.evaluate("window.__e2eDocument === true"), "the page reloaded instead of htmx"
    screenshot("payments-polled")

    # A polled instance panel holds still while the user types the name to terminate it
    # (the swap would wipe the field), and polls again once the field is empty.
    Instance.objects.filter(pk=instance.pk).update(
        state="provisioning", state_changed_at=timezone.now() - timedelta(seconds=5)
    )
    polls: list[str] = []

    def count_poll(request: Request) -> None:
        is_poll = request.headers.get("hx-request") == "true"
        if is_poll and request.url.rstrip("/").endswith(f"/instances/{instance.pk}"):
            polls.append(request.url)

    page.on("request", count_poll)
    visit(page, base, f"/instances/{instance.pk}/")
    expect(page.locator("#instance-status[hx-trigger]")).to_have_count(1)
    page.wait_for_timeout(2_800)
    assert polls, "the provisioning instance's panel does not poll"
    confirm = page.get_by_label(f"Type {instance.name} to terminate it")
    confirm.fill(instance.name[:3])
    seen = len(polls)
    page.wait_for_timeout(5_500)  # two poll intervals
    assert len(polls) == seen, "the panel polled while the user was typing"
    expect(confirm).to_have_value(instance.name[:3])
    confirm.fill("")
    page.wait_for_timeout(2_800)
    assert len(polls) > seen, "the panel did not poll again once the field was empty"
    page.remove_listener("request", count_poll)
    assert console.problems() == [], console.problems()

    # --- staff: the finance area, Django admin (custom templates too) and the API docs --------
    page.get_by_role("button", name="Log out").click()
    log_in(page, base, "operator@example.com", factories.PASSWORD)
    type_pk = InstanceType.objects.order_by("pk").first().pk
    for path in [
        "/finance/",
        "/admin/",
        "/admin/compute/instance/",
        f"/admin/compute/instance/{instance.pk}/change/",
        f"/admin/accounts/organization/{org.pk}/change/",
        f"/admin/billing/invoice/{invoice.pk}/change/",
        f"/admin/catalog/instancetype/{type_pk}/change/",
        "/admin/catalog/price/add/",
        "/admin/catalog/host/",
        "/admin/catalog/host/register/",
    ]:
        visit(page, base, path)
    # Admin's own scripts run: the date widget's "Today" shortcut fills the field.
    visit(page, base, "/admin/catalog/price/add/")
    page.get_by_role("button", name="Today").first.click()
    expect(page.locator("#id_effective_from_0")).to_have_value(re.compile(r"\d{4}-\d{2}-\d{2}"))
    screenshot("admin-price-add")

    visit(page, base, "/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("GPU Cloud Portal API")
    expect(page.locator(".opblock").first).to_be_visible()
    screenshot("api-docs")
    assert console.problems() == [], console.problems()
