"""A Chinese company gets its special VAT invoice (增值税专用发票), in Chinese.

北京算力科技有限公司, verified as an enterprise and billed in yuan, paid its October invoice.
Its owner requests a special VAT fapiao for that month on the fapiao page (a wrong credit code
is refused next to the field first). Finance exports the batch-issuance spreadsheet, records
the fapiao the tax authority issued (its 20-digit number, date, amounts and PDF), and the
customer, emailed, downloads it. Then a credit note on the month is refused until finance
records the red-letter fapiao against the original. Every label is looked up in the catalogue
(``zh``), and the pages are kept as screenshots at 1366 and 390 px.
"""

import io
from decimal import Decimal

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.errors import BillingErrorCode
from billing.fapiao import services as fapiao
from billing.invoicing import services as invoicing
from billing.models import FapiaoRequest, RedLetterFapiao
from portal.errors import Conflict
from tests import factories
from tests.e2e.helpers import emailed_link
from tests.e2e.test_journey_zh import CJK, DESKTOP, PHONE, zh
from tests.factories import billing as billing_factories
from tests.factories import fapiao as fapiao_factories

pytestmark = pytest.mark.browser

ORG_NAME = "北京算力科技有限公司"
NUMBER = "26112000000012345678"
RED = "26112000000087654321"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


@pytest.fixture
def page(browser):
    context = browser.new_context(locale="zh-CN", viewport=DESKTOP)
    yield context.new_page()
    context.close()


@pytest.fixture
def issued_invoices_flushable(transactional_db):
    """The test's issued invoices are frozen by database triggers, which would refuse the
    flush after a live-server test: lift the triggers, empty the tables, and put them back."""
    yield
    import importlib

    from django.core.management import call_command
    from django.db import connection

    freeze = importlib.import_module("billing.migrations.0003_invoice_freeze")
    vendor = connection.vendor
    with connection.cursor() as cursor:
        for statement in freeze.REVERSE[vendor]:
            cursor.execute(statement)
    try:
        call_command("flush", interactive=False, verbosity=0)
    finally:
        with connection.cursor() as cursor:
            for statement in freeze.FORWARD[vendor]:
                cursor.execute(statement)


def _log_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label(zh("Email")).fill(email)
    page.get_by_label(zh("Password")).fill(factories.PASSWORD)
    page.get_by_role("button", name=zh("Log in")).click()


def test_a_special_vat_fapiao_is_requested_issued_downloaded_and_reversed_in_chinese(
    live_server, issued_invoices_flushable, settings, page: Page, screenshot, tmp_path
):
    settings.FAPIAO_FILE_DIR = tmp_path / "fapiao"
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    base = live_server.url
    world = fapiao_factories.cny_world(name=ORG_NAME, country="CN")
    owner = world.owner
    owner.email_verified_at = timezone.now()
    owner.save(update_fields=["email_verified_at"])
    fapiao_factories.verify_enterprise(world.org)
    invoice = fapiao_factories.paid_october(world, hours=10)  # 250.00 CNY
    staff = billing_factories.finance_staff("caiwu@example.com", email_verified_at=timezone.now())
    staff.user_permissions.add(Permission.objects.get(codename="issue_fapiao"))

    def both_widths(name: str) -> None:
        screenshot(name)
        page.set_viewport_size(PHONE)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{page.url} scrolls sideways on a phone ({width}px)"
        screenshot(f"{name}-phone")
        page.set_viewport_size(DESKTOP)

    # --- the owner asks for a special VAT invoice for October ------------------------------------
    _log_in(page, base, owner.email)
    page.goto(f"{base}/billing/")
    page.get_by_role("link", name=zh("Fapiao (发票): request one for paid invoices")).click()
    expect(page.get_by_role("heading", name=zh("Request a fapiao"))).to_be_visible()
    page.get_by_label(zh("Special VAT invoice (专用发票)")).check()
    page.get_by_label(invoice.number).check()
    page.get_by_label(zh("Buyer title (抬头)")).fill(ORG_NAME)
    page.get_by_label(zh("Unified Social Credit Code")).fill("91110108MA01ABCD1J")  # check off
    page.get_by_label(zh("Registered address")).fill("北京市海淀区中关村大街1号")
    page.get_by_label(zh("Phone")).fill("010-62345678")
    page.get_by_label(zh("Bank"), exact=True).fill("中国工商银行北京海淀支行")
    page.get_by_label(zh("Bank account")).fill("0200004509001234567")
    both_widths("request-form")
    page.get_by_role("button", name=zh("Request the fapiao")).click()
    expect(page.locator("#id_buyer_tax_id_error")).to_contain_text(CJK)
    assert not FapiaoRequest.objects.exists()
    page.get_by_label(zh("Unified Social Credit Code")).fill(fapiao_factories.CREDIT_CODE)
    page.get_by_role("button", name=zh("Request the fapiao")).click()
    expect(page.get_by_role("heading", name=zh("Special VAT invoice (专用发票)"))).to_be_visible()
    request = FapiaoRequest.objects.get()
    assert (request.kind, request.amount, request.net, request.tax) == (
        "special",
        Decimal("250.00"),
        Decimal("235.85"),
        Decimal("14.15"),
    )
    expect(page.locator("tfoot")).to_contain_text("¥235.85")
    expect(page.locator("tfoot")).to_contain_text("¥14.15")
    expect(page.locator("tfoot")).to_contain_text("¥250.00")
    both_widths("request-sent")
    page.context.clear_cookies()

    # --- finance exports the batch spreadsheet and records the issued fapiao ----------------------
    _log_in(page, base, staff.email)
    page.goto(f"{base}/finance/")
    page.get_by_role("link", name=zh("Fapiao: export requests and record issued fapiao")).click()
    expect(page.get_by_role("heading", name=zh("Fapiao queue"))).to_be_visible()
    both_widths("finance-queue")
    with page.expect_download() as download:
        page.get_by_role("button", name=zh("Export batch spreadsheet (XLSX)")).click()
    sheet = openpyxl.load_workbook(io.BytesIO(download.value.path().read_bytes())).active
    rows = list(sheet.iter_rows(values_only=True))
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["发票类型"] == "数电票-增值税专用发票"
    assert row["购买方纳税人识别号"] == fapiao_factories.CREDIT_CODE
    assert str(row["价税合计"]) in ("250", "250.00")
    request.refresh_from_db()
    assert request.status == "exported"
    issued_file = tmp_path / "fapiao.pdf"
    issued_file.write_bytes(PDF)
    page.goto(f"{base}/finance/fapiao/")
    queue = page.locator(f'[data-request-forms="{request.pk}"]')
    queue.get_by_label(zh("Fapiao number")).fill(NUMBER)
    queue.get_by_label(zh("Date issued")).fill(timezone.localdate().isoformat())
    queue.get_by_label(zh("Fapiao file (PDF, OFD or XML)")).set_input_files(str(issued_file))
    page.get_by_role("button", name=zh("Record issued fapiao")).click()
    expect(page.locator(".messages, [role=status], .messagelist").first).to_contain_text(NUMBER)
    request.refresh_from_db()
    assert (request.status, request.number) == ("issued", NUMBER)
    page.context.clear_cookies()

    # --- the customer is emailed and downloads it -------------------------------------------------
    link = emailed_link(world.org.billing_email)
    assert link.endswith(f"/billing/fapiao/{request.pk}/")
    _log_in(page, base, owner.email)
    page.goto(link.replace(settings.SITE_URL, base))
    expect(page.locator("body")).to_contain_text(NUMBER)
    both_widths("issued")
    with page.expect_download() as download:
        page.get_by_role("link", name=zh("Download the fapiao")).click()
    assert download.value.path().read_bytes() == PDF

    # --- a credit note on the month asks for the red-letter record first -------------------------
    finance_actor = billing_factories.finance(world.org)
    with pytest.raises(Conflict) as refused:
        invoicing.credit_note_create(
            invoice, actor=finance_actor, reason="服务中断补偿", amount="40.00"
        )
    assert refused.value.code == BillingErrorCode.FAPIAO_RED_LETTER_REQUIRED
    page.context.clear_cookies()
    _log_in(page, base, staff.email)
    page.goto(f"{base}/finance/fapiao/")
    page.get_by_label(zh("Original fapiao number")).fill(NUMBER)
    page.get_by_label(zh("Invoice corrected")).fill(invoice.number)
    page.get_by_label(zh("Red-letter fapiao number")).fill(RED)
    page.locator("#red-issued").fill(timezone.localdate().isoformat())
    page.get_by_label(zh("Amount reversed (tax included)")).fill("40.00")
    page.locator("#red-net").fill("37.74")
    page.locator("#red-tax").fill("2.26")
    page.locator("#red-reason").fill("服务中断补偿")
    both_widths("red-letter")
    page.get_by_role("button", name=zh("Record red-letter fapiao")).click()
    expect(page.locator("body")).to_contain_text(RED)
    assert RedLetterFapiao.objects.get().original_id == request.pk
    note = invoicing.credit_note_create(
        invoice, actor=finance_actor, reason="服务中断补偿", amount="40.00"
    )
    assert str(note.total) == "-40.00"


def test_the_fapiao_pages_read_in_english_and_fit_a_phone(
    live_server, issued_invoices_flushable, settings, browser, screenshot_dir, tmp_path
):
    """The same pages in an English browser: labels in English, nothing wider than a phone."""
    settings.FAPIAO_FILE_DIR = tmp_path / "fapiao"
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    base = live_server.url
    world = fapiao_factories.cny_world(name="Acme Compute Ltd", country="CN")
    world.owner.email_verified_at = timezone.now()
    world.owner.save(update_fields=["email_verified_at"])
    invoice = fapiao_factories.paid_october(world, hours=10)
    fapiao.request_create(
        actor=world.actor(),
        kind="ordinary",
        invoice_ids=[invoice.pk],
        buyer=fapiao.Buyer(title="Acme Compute Ltd", tax_id=fapiao_factories.CREDIT_CODE),
    )
    staff = billing_factories.finance_staff(
        "finance-en@example.com", email_verified_at=timezone.now()
    )
    staff.user_permissions.add(Permission.objects.get(codename="issue_fapiao"))
    context = browser.new_context(locale="en-GB", viewport=DESKTOP)
    page = context.new_page()

    def both_widths(name: str) -> None:
        for size, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
            page.set_viewport_size(size)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"{page.url} scrolls sideways ({width}px)"
            page.screenshot(
                path=str(screenshot_dir / f"fapiao_en-{name}{suffix}.png"), full_page=True
            )
        page.set_viewport_size(DESKTOP)

    for email, path, heading, name in (
        (world.owner.email, "/billing/fapiao/", "Fapiao (发票)", "customer"),
        (staff.email, "/finance/fapiao/", "Fapiao queue", "finance"),
    ):
        page.context.clear_cookies()
        page.goto(f"{base}/login/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(factories.PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.goto(f"{base}{path}")
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        expect(page.locator("main, body").first).to_contain_text("250.00")
        both_widths(name)
    context.close()
