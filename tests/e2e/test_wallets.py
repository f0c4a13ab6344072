"""Topping up with Alipay in a browser: the QR page turns to success on its own once the (local)
Alipay gateway is paid and its notification reaches the portal."""

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.models import LedgerEntry, Payment
from tests import factories
from tests.billing.wallets.gateways import deliver, gateways_start
from tests.e2e.test_csp import Console

pytestmark = pytest.mark.browser


@pytest.fixture
def gateways():
    started = gateways_start()
    yield started
    started.stop()


def test_the_qr_page_turns_to_success_when_alipay_is_paid(
    live_server, transactional_db, page: Page, settings, gateways, screenshot
):
    gateways.settings(settings, site_url=live_server.url)
    org = factories.organization(
        "Shenzhen Tensor", credit_amount=None, currency="CNY", country="CN"
    )
    factories.member(
        org, "owner", factories.user("owner@example.cn", email_verified_at=timezone.now())
    )
    base = live_server.url
    console = Console(page)  # the QR page and its polling run under the CSP
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("owner@example.cn")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{base}/billing/")
    expect(page.get_by_test_id("wallet-no-auto-recharge")).to_be_visible()

    page.get_by_label("Amount").fill("300")
    page.get_by_label("Alipay").check()
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("heading", name="Pay with Alipay")).to_be_visible()
    expect(page.get_by_test_id("pay-qr").locator("svg")).to_be_visible()
    expect(page.get_by_role("link", name="Or pay on the Alipay page")).to_be_visible()
    expect(page.get_by_test_id("pay-status")).to_have_attribute("data-status", "pending")
    screenshot("qr")

    payment = Payment.objects.get(organization=org)
    status, body = deliver(gateways.alipay.pay(payment.checkout_id))
    assert (status, body) == (200, b"success")

    expect(page.get_by_test_id("pay-status")).to_have_attribute(
        "data-status", "succeeded", timeout=8_000
    )
    expect(page.get_by_text("300.00 CNY is added to your credit.")).to_be_visible()
    screenshot("paid")
    assert LedgerEntry.objects.filter(account__organization=org, kind="top_up").count() == 1
    page.get_by_role("link", name="Back to billing").click()
    expect(page.get_by_test_id("balance")).to_have_text("¥300.00")
    assert console.problems() == [], console.problems()
