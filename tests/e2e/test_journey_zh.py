"""A Chinese company's journey, in Chinese, in a browser whose language is Chinese.

李雷 signs up for 北京算力科技有限公司 and confirms the email; the organisation invoices in
yuan in China. He adds his SSH key and verifies the organisation as an enterprise (the credit
code is checked at once; the licence is uploaded); an operator approves it in Django admin. He
tops up twice, with WeChat Pay and with Alipay, through local gateways that sign like the real
ones: the credit comes from the verified notifications only. Then he launches an H200 in the
Beijing region and watches it reach running. Every page is in Chinese (the labels are looked
up in the catalogue, so an untranslated one fails here), amounts in yuan are written with ¥,
and each step is kept as a screenshot at 1366 px, the main pages at 390 px too.

The English journey (test_journey.py) walks the rest of the product in English.
"""

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone, translation
from playwright.sync_api import Page, expect

from billing.models import LedgerEntry, Payment
from portal.accounts.models import Organization, OrganizationVerification
from portal.catalog.demo import load_demo_catalog
from portal.compute.models import Instance
from tests import factories
from tests.billing.wallets.gateways import deliver, gateways_start
from tests.e2e.helpers import background_worker, emailed_link

pytestmark = pytest.mark.browser

EMAIL = "lilei@beijing-compute.example.cn"
PASSWORD = "gpu-portal-journey-Passw0rd"
ORG_NAME = "北京算力科技有限公司"
CREDIT_CODE = "91350100M000100Y43"
AGENT_ID = "11010519491231002X"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
CJK = re.compile(r"[\u4e00-\u9fff]")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}


def zh(english: str, context: str | None = None) -> str:
    """The Chinese the page shows for ``english``; fails when the catalogue has none."""
    with translation.override("zh-hans"):
        text = translation.pgettext(context, english) if context else translation.gettext(english)
    assert CJK.search(text), f"no Chinese for {english!r}"
    return text


@pytest.fixture
def gateways(settings, live_server):
    started = gateways_start()
    started.settings(settings, site_url=live_server.url)
    yield started
    started.stop()


@pytest.fixture
def page(browser):
    """A browser that asks for Chinese, as one in China does (the ``screenshot`` fixture
    photographs this page)."""
    context = browser.new_context(locale="zh-CN", viewport=DESKTOP)
    yield context.new_page()
    context.close()


def test_a_chinese_company_signs_up_verifies_pays_and_launches_in_chinese(
    live_server,
    transactional_db,
    settings,
    simulated_backend,
    gateways,
    page: Page,
    browser,
    screenshot,
    screenshot_dir,
    tmp_path,
):
    base = live_server.url
    settings.COMPUTE_POLL_SECONDS = 0.5
    settings.VERIFICATION_DOCUMENT_DIR = tmp_path / "private"
    simulated_backend(boot_seconds=2, stop_seconds=1)
    load_demo_catalog()
    operator = factories.user("reviewer@example.com", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="review_verification"))

    def both_widths(name: str) -> None:
        screenshot(name)
        page.set_viewport_size(PHONE)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{page.url} scrolls sideways on a phone ({width}px)"
        screenshot(f"{name}-phone")
        page.set_viewport_size(DESKTOP)

    # --- sign up and confirm the email, in Chinese ---------------------------------------------
    page.goto(f"{base}/signup/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.get_by_role("heading", name=zh("Create your account"))).to_be_visible()
    page.get_by_label(zh("Full name")).fill("李雷")
    page.get_by_label(zh("Email")).fill(EMAIL)
    page.get_by_label(zh("Password")).fill(PASSWORD)
    both_widths("signup")
    page.get_by_role("button", name=zh("Sign up")).click()
    expect(page).to_have_url(f"{base}/organizations/new/")
    page.goto(emailed_link(EMAIL))
    expect(page.get_by_role("heading", name=zh("Email confirmed"))).to_be_visible()
    page.get_by_role("link", name=zh("Continue")).click()

    # --- the organisation, in China and in yuan ---------------------------------------------------
    page.get_by_label(zh("Organisation name")).fill(ORG_NAME)
    page.get_by_label(zh("Country")).select_option("CN")
    page.get_by_label(zh("Currency")).select_option("CNY")
    page.get_by_role("button", name=zh("Create organisation")).click()
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", name=ORG_NAME, level=1)).to_be_visible()
    org = Organization.objects.get(name=ORG_NAME)
    assert (org.currency, org.country) == ("CNY", "CN")
    both_widths("dashboard")

    # --- an SSH key ------------------------------------------------------------------------------
    page.goto(f"{base}/ssh-keys/")
    page.get_by_label(zh("Name"), exact=True).fill("lilei-laptop")
    page.get_by_label(zh("Public key")).fill(factories.ed25519_public_key("lilei@laptop"))
    page.get_by_role("button", name=zh("Add key")).click()
    expect(page.get_by_role("row").filter(has_text="lilei-laptop")).to_be_visible()

    # --- enterprise verification: a bad credit code is refused at once ----------------------------
    page.goto(f"{base}/organization/verification/")
    licence = tmp_path / "licence.pdf"
    licence.write_bytes(PDF)

    def fill_enterprise(credit_code: str) -> None:
        page.get_by_label(zh("Enterprise"), exact=True).check()
        page.get_by_label(zh("Registered company name")).fill(ORG_NAME)
        page.get_by_label(zh("Unified Social Credit Code")).fill(credit_code)
        page.get_by_label(zh("Business licence")).set_input_files(str(licence))
        page.get_by_label(zh("Authorised person's name")).fill("李雷")
        page.get_by_label(zh("Authorised person's resident identity number")).fill(AGENT_ID)

    fill_enterprise("91350100M000100Y44")  # one check character off
    page.get_by_role("button", name=zh("Submit for review")).click()
    expect(page.locator("#id_credit_code_error")).to_contain_text("credit_code_invalid")
    expect(page.locator("#id_credit_code_error")).to_contain_text(CJK)
    assert not OrganizationVerification.objects.filter(organization=org).exists()
    fill_enterprise(CREDIT_CODE)
    page.get_by_role("button", name=zh("Submit for review")).click()
    state = page.locator("#verification-state")
    expect(state).to_contain_text("1101**********002X")
    expect(page.locator("body")).not_to_contain_text(AGENT_ID)
    both_widths("verification-submitted")

    # --- an operator approves it in admin (admin speaks Chinese to a Chinese browser too) ---------
    context = browser.new_context(locale="zh-CN", viewport=DESKTOP)
    admin = context.new_page()
    admin.goto(f"{base}/admin/login/")
    admin.locator("#id_username").fill(operator.email)
    admin.locator("#id_password").fill(factories.PASSWORD)
    admin.locator("input[type=submit]").click()
    admin.goto(f"{base}/admin/accounts/organizationverification/")
    expect(admin.locator("html")).to_have_attribute("lang", "zh-hans")
    admin.get_by_role("link", name=re.compile(ORG_NAME)).first.click()
    expect(admin.locator("body")).to_contain_text("1101**********002X")
    admin.screenshot(path=str(screenshot_dir / "chinese_company-admin-review.png"), full_page=True)
    admin.locator("#verification-approve").click()
    expect(admin.locator(".messagelist")).to_be_visible()
    context.close()
    assert OrganizationVerification.objects.get(organization=org).status == "approved"

    # --- top up with WeChat Pay, then Alipay: the credit comes from the verified notifications ---
    def top_up(amount: str, method: str, gateway) -> None:
        page.goto(f"{base}/billing/")
        page.get_by_label(zh("Amount")).fill(amount)
        page.get_by_label(zh(method)).check()
        page.get_by_role("button", name=zh("Continue to payment")).click()
        expect(page.get_by_test_id("pay-qr").locator("svg")).to_be_visible()
        expect(page.get_by_test_id("pay-status")).to_have_attribute("data-status", "pending")
        both_widths(f"pay-{method.split()[0].lower()}")
        payment = Payment.objects.filter(organization=org).latest("pk")
        status, _body = deliver(gateway.pay(payment.checkout_id))
        assert status in (200, 204)
        expect(page.get_by_test_id("pay-status")).to_have_attribute(
            "data-status", "succeeded", timeout=10_000
        )

    top_up("300", "WeChat Pay", gateways.wechatpay)
    top_up("200", "Alipay", gateways.alipay)
    page.goto(f"{base}/billing/")
    expect(page.get_by_test_id("balance")).to_have_text("¥500.00")
    credits = LedgerEntry.objects.filter(account__organization=org, kind="top_up")
    assert sorted(entry.amount for entry in credits) == [Decimal("200"), Decimal("300")]
    both_widths("billing")

    # --- launch in Beijing and watch it reach running ------------------------------------------
    with background_worker():
        page.goto(f"{base}/instances/launch/?type=gpu_1x_h200_sxm")
        page.get_by_label(zh("Region")).select_option("cn-north-1")
        page.get_by_label(zh("Name"), exact=True).fill("beijing-train-01")
        expect(page.get_by_test_id("price-hourly")).to_contain_text("¥")
        both_widths("launch")
        page.get_by_role("button", name=zh("Launch instance")).click()
        expect(page).to_have_url(re.compile(rf"{re.escape(base)}/instances/\d+/$"))
        instance = Instance.objects.get(organization=org, name="beijing-train-01")
        badge = page.locator("#instance-status .badge.state")
        expect(badge).to_have_text(zh("Running"), timeout=20_000)
        both_widths("instance-running")
    assert instance.region.code == "cn-north-1"
    assert timezone.now() >= instance.created_at
