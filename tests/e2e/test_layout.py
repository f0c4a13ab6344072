"""The header on a phone and on a desktop, and the language switcher, in Chromium."""

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from portal.accounts.models import User
from portal.catalog.demo import load_demo_catalog
from tests import factories

pytestmark = pytest.mark.browser

EMAIL = "header@example.com"


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base}/")


@pytest.fixture
def owner(transactional_db):
    load_demo_catalog()
    org = factories.organization(name="Header Org", currency="CNY")
    user = factories.user(EMAIL, email_verified_at=timezone.now())
    factories.member(org, "owner", user)
    return user


def test_on_a_phone_the_links_fold_behind_the_menu_button(live_server, owner, page, screenshot):
    base = live_server.url
    page.set_viewport_size({"width": 390, "height": 844})
    _log_in(page, base)
    menu = page.get_by_role("button", name="Menu")
    nav = page.get_by_role("navigation", name="Main")
    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(nav).to_be_hidden()
    header = page.locator("header.topbar").bounding_box()
    assert header["height"] < 70, f"the closed header is {header['height']}px high"
    screenshot("phone-closed")

    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(nav.get_by_role("link", name="Instances")).to_be_visible()
    screenshot("phone-open")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the open menu scrolls sideways ({width}px)"
    nav.get_by_role("link", name="Billing").click()
    expect(page).to_have_url(f"{base}/billing/")
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()  # closed on a new page


def test_on_a_desktop_the_links_show_on_one_line(live_server, owner, page):
    base = live_server.url
    page.set_viewport_size({"width": 1366, "height": 900})
    _log_in(page, base)
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_visible()
    tops = {round(box["y"]) for box in nav.get_by_role("link").evaluate_all(
        "links => links.map(link => link.getBoundingClientRect().toJSON())"
    )}  # fmt: skip
    assert len(tops) == 1, f"the navigation wraps onto {len(tops)} lines"


def test_the_switcher_speaks_chinese_and_keeps_the_choice(live_server, owner, page, screenshot):
    base = live_server.url
    page.set_viewport_size({"width": 1366, "height": 900})
    _log_in(page, base)
    page.get_by_label("Language").select_option("zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    nav = page.get_by_role("navigation", name="主导航")
    expect(nav.get_by_role("link", name="实例")).to_be_visible()
    expect(page).to_have_url(f"{base}/")
    screenshot("dashboard-zh")
    assert User.objects.get(email=EMAIL).language == "zh-hans"

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(page.get_by_role("button", name="菜单")).to_be_visible()
    screenshot("dashboard-zh-phone")
    page.get_by_role("button", name="菜单").click()
    page.get_by_label("语言").select_option("en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    assert User.objects.get(email=EMAIL).language == "en"
