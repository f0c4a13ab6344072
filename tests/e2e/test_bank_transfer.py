"""Bank transfers in a browser: finance imports a bank statement CSV in /finance/, confirms
the suggested match of a line quoting a customer's payment reference, and the customer's
balance rises by the transfer."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.transfers import services as transfers
from tests import factories
from tests.factories.billing import finance_staff

pytestmark = pytest.mark.browser

HEADER = "value_date,amount,currency,payer_name,payer_account,remark,bank_transaction_id\n"


def _log_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_finance_imports_a_statement_and_matches_a_line(
    live_server, transactional_db, page: Page, screenshot, tmp_path
):
    org = factories.organization(
        "北京某某科技有限公司", currency="CNY", country="CN", credit_amount=None
    )
    factories.member(
        org, "owner", factories.user("owner@example.com", email_verified_at=timezone.now())
    )
    code = transfers.reference_for(org).code
    staff = finance_staff("finance@example.com", email_verified_at=timezone.now())
    staff.user_permissions.add(Permission.objects.get(codename="match_bank_transfer"))
    statement = tmp_path / "statement.csv"
    statement.write_text(
        HEADER
        + f"2026-12-01,5000.00,CNY,北京某某科技有限公司,6222 0000 1111,货款 {code},TX-E2E-1\n"
        + "2026-12-01,99.00,CNY,Unknown payer,,no reference,TX-E2E-2\n",
        encoding="utf-8",
    )
    base = live_server.url

    _log_in(page, base, "owner@example.com")
    page.goto(f"{base}/billing/")
    expect(page.get_by_test_id("payment-reference")).to_have_text(code)
    expect(page.get_by_test_id("balance")).to_contain_text("¥0.00")
    page.context.clear_cookies()

    _log_in(page, base, "finance@example.com")
    page.get_by_role("link", name="Finance").click()
    page.get_by_role("link", name="Bank transfers: match received transfers").click()
    expect(page).to_have_url(re.compile(r"/finance/bank-transfers/$"))
    page.get_by_label("Bank statement (CSV)").set_input_files(str(statement))
    page.get_by_role("button", name="Import").click()
    expect(page.locator(".messages")).to_contain_text("Imported 2 lines")
    lines = page.get_by_test_id("unmatched-lines")
    row = lines.get_by_role("row").filter(has_text="TX-E2E-1")
    expect(row).to_contain_text("Suggested: 北京某某科技有限公司")
    screenshot("imported")
    row.get_by_role("button", name="Confirm match").click()
    expect(page.get_by_test_id("decided-lines")).to_contain_text("北京某某科技有限公司")
    expect(lines.get_by_role("row").filter(has_text="TX-E2E-2")).to_be_visible()  # still listed
    expect(page.get_by_test_id("unmatched-lines")).not_to_contain_text("TX-E2E-1")
    screenshot("matched")
    page.context.clear_cookies()

    _log_in(page, base, "owner@example.com")
    page.goto(f"{base}/billing/")
    expect(page.get_by_test_id("balance")).to_contain_text("¥5000.00")
