"""The finance area in a browser: a finance staff user opens the register, sees the totals,
starts a CSV register export, watches its progress bar, then downloads the file."""

import csv
import io
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.finance import services as finance
from billing.finance.exports import REGISTER_COLUMNS
from billing.models import ExportJob
from billing.tasks import export_run
from tests import factories
from tests.factories.billing import finance_staff, october_register

pytestmark = pytest.mark.browser


@pytest.fixture
def month():
    """October 2026, invoiced in November (``tests.factories.billing.october_register``)."""
    return october_register()


def test_finance_staff_export_the_register_as_csv(
    live_server,
    transactional_db,
    month,
    page: Page,
    screenshot,
    monkeypatch,
):
    finance_staff("finance@example.com", email_verified_at=timezone.now())
    # Hold the job in the queue so the progress bar can be seen; the test runs the task.
    monkeypatch.setattr(finance, "enqueue_on_commit", lambda task, *args: None)
    base = live_server.url

    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("finance@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Finance").click()
    expect(page).to_have_url(re.compile(r"/finance/$"))
    page.get_by_label("From month").fill("2026-10")
    page.get_by_label("To month").fill("2026-10")
    page.get_by_role("button", name="Show register").click()
    totals = page.get_by_test_id("totals")
    expect(totals.get_by_role("row", name=re.compile("^USD"))).to_contain_text("37.00")
    expect(totals.get_by_role("row", name=re.compile("^CNY"))).to_contain_text("131.71")
    expect(page.get_by_test_id("register")).to_contain_text("INV-2026-000002")
    screenshot("register")

    page.get_by_label("What").select_option("register")
    page.get_by_label("Format").select_option("csv")
    page.get_by_role("button", name="Start export").click()
    expect(page).to_have_url(re.compile(r"/finance/exports/\d+/$"))
    expect(page.get_by_role("progressbar", name="Export progress")).to_be_visible()
    screenshot("export-queued")

    job = ExportJob.objects.get()
    export_run.delay(job.pk)  # eager: the job runs here; the page's poll picks it up
    link = page.get_by_role("link", name="Download register-2026-10_2026-10.csv")
    expect(link).to_be_visible()
    expect(page.get_by_role("progressbar")).to_have_count(0)
    screenshot("export-done")

    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "register-2026-10_2026-10.csv"
    with open(download.path(), encoding="utf-8", newline="") as file:
        rows = list(csv.reader(io.StringIO(file.read())))
    assert rows[0] == [column.name for column in REGISTER_COLUMNS]
    assert [row[0] for row in rows[1:]] == [
        "CN-2026-000001",
        "INV-2026-000001",
        "INV-2026-000002",
        "INV-2026-000003",
    ]
