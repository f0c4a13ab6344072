"""Usage in a browser: the dashboard's spend, the usage page's range picker (htmx, no reload),
and the CSV downloaded through the browser, whose total is the API's ``total_cost``.

Usage is made before the browser starts, by the lifecycle itself: instances launched with the
compute services on the in-memory backend (its sync task runs eagerly on commit here), run and
terminated at frozen moments three days ago, and those hours closed with ``usage_close_hour``.
Finished instances cost nothing more, so the page, the CSV and the API see the same figures
whenever they are asked; one instance launched now keeps running for the dashboard.
"""

import csv
import io
import json
import re
import urllib.request
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone
from playwright.sync_api import Page, expect

from portal.accounts import services as account_services
from portal.compute import services as compute
from portal.metering import services as metering
from tests import factories
from tests.e2e.helpers import assert_no_reload, mark_document
from tests.factories import World

pytestmark = pytest.mark.browser


def launch(world: World, name: str, instance_type: str = "gpu_1x_h200"):
    instance, _ = compute.instance_launch(
        actor=world.actor(), request=world.request(name, instance_type)
    )
    compute.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == "running"
    return instance


def terminate(world: World, instance) -> None:
    compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    while compute.instance_sync(instance_id=instance.pk):
        pass


def test_usage_page_picker_csv_and_api_agree(
    live_server, transactional_db, memory_backend, page: Page, screenshot
):
    base = live_server.url
    today = timezone.now().date()
    day = today - timedelta(days=3)
    t0 = datetime.combine(day, time(9, 30), tzinfo=UTC)
    with time_machine.travel(t0 - timedelta(days=1), tick=False):
        world = World()
    with time_machine.travel(t0, tick=False) as clock:
        alpha = launch(world, "alpha")  # 3.50 USD/h, 09:30 → 12:00
        clock.move_to(t0 + timedelta(minutes=30))
        beta = launch(world, "beta", "gpu_2x_h200")  # 7.00 USD/h, 10:00 → 11:00
        clock.move_to(t0 + timedelta(hours=1, minutes=30))
        terminate(world, beta)
        clock.move_to(t0 + timedelta(hours=2, minutes=30))
        terminate(world, alpha)
    for hour in (9, 10, 11):
        metering.usage_close_hour(hour_start=t0.replace(hour=hour, minute=0))
    launch(world, "gamma")  # running now, for the dashboard
    user = factories.user("finance@example.com", email_verified_at=timezone.now())
    factories.member(world.org, "billing", user)
    _, secret = account_services.api_key_create(actor=world.actor(), name="e2e", role="viewer")

    # --- the dashboard: running instances, spend this month, burn rate ------------------------
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("finance@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("running-instances")).to_have_text("1")
    expect(page.get_by_test_id("burn-rate")).to_have_text("3.50 USD/h")
    expect(page.get_by_test_id("month-to-date")).to_have_text(re.compile(r"^[\d,]+\.\d\d USD$"))
    screenshot("dashboard")

    # --- the usage page: this month by default ------------------------------------------------
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page).to_have_url(f"{base}/usage/")
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    expect(page.get_by_label("From")).to_have_value(today.replace(day=1).isoformat())
    expect(page.get_by_label("To (included)")).to_have_value(today.isoformat())
    mark_document(page)

    # --- pick the day of the usage and the days around it: the results swap in place ----------
    first, last = day - timedelta(days=1), day + timedelta(days=1)
    page.get_by_label("From").fill(first.isoformat())
    page.get_by_label("To (included)").fill(last.isoformat())
    page.get_by_role("button", name="Show usage").click()
    expect(page).to_have_url(f"{base}/usage/?start={first}&end={last}")
    total = page.get_by_test_id("usage-total")
    expect(total).to_have_text("15.75 USD")  # 2.5 h at 3.50 and 1 h at 7.00
    chart = page.get_by_role("img", name=re.compile("Cost per day in USD"))
    expect(chart).to_be_visible()
    expect(chart.locator("rect")).to_have_count(1)  # one day with usage
    by_instance = page.locator("#by-instance")
    expect(by_instance.get_by_role("row", name=re.compile("^alpha"))).to_contain_text("8.75")
    expect(by_instance.get_by_role("row", name=re.compile("^beta"))).to_contain_text("7.00")
    day_row = page.locator("#by-day").get_by_role("row", name=f"{day:%a} {day.day} {day:%b %Y}")
    expect(day_row).to_contain_text("3.50")  # running hours
    assert_no_reload(page)
    screenshot("usage-range")

    # --- a reversed range is refused at the field, in place -------------------------------------
    page.get_by_label("From").fill(last.isoformat())
    page.get_by_label("To (included)").fill(first.isoformat())
    page.get_by_role("button", name="Show usage").click()
    expect(page.locator("#id_end_error")).to_have_text("The end date is before the start date.")
    expect(page.get_by_label("To (included)")).to_be_focused()
    expect(page.get_by_test_id("usage-total")).to_have_count(0)
    assert_no_reload(page)
    screenshot("usage-reversed")

    # --- a period without usage says so ---------------------------------------------------------
    quiet_first, quiet_last = f"{today.year - 1}-01-01", f"{today.year - 1}-01-31"
    page.get_by_label("From").fill(quiet_first)
    page.get_by_label("To (included)").fill(quiet_last)
    page.get_by_role("button", name="Show usage").click()
    expect(page.get_by_text("No usage in this period.")).to_be_visible()
    expect(page.get_by_test_id("usage-total")).to_have_text("0.00 USD")
    expect(page.get_by_role("img")).to_have_count(0)
    assert_no_reload(page)
    screenshot("usage-empty")

    # --- a preset: the last 7 days include the usage and gamma's live hour --------------------
    page.get_by_role("link", name="Last 7 days").click()
    expect(page).to_have_url(f"{base}/usage/?start={today - timedelta(days=6)}&end={today}")
    expect(page.get_by_label("From")).to_have_value((today - timedelta(days=6)).isoformat())
    expect(page.get_by_role("link", name="Last 7 days")).to_have_attribute("aria-current", "true")
    expect(page.locator("#by-instance")).to_contain_text("gamma")
    assert_no_reload(page)

    # --- Back returns to the previous range; then download the picked range's CSV -------------
    page.go_back()
    expect(page).to_have_url(f"{base}/usage/?start={quiet_first}&end={quiet_last}")
    expect(page.get_by_text("No usage in this period.")).to_be_visible()
    page.get_by_label("From").fill(first.isoformat())
    page.get_by_label("To (included)").fill(last.isoformat())
    page.get_by_role("button", name="Show usage").click()
    expect(page).to_have_url(f"{base}/usage/?start={first}&end={last}")
    expect(page.get_by_test_id("usage-total")).to_have_text("15.75 USD")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="by instance", exact=True).click()
    download = download_info.value
    assert download.suggested_filename == f"usage-{world.org.slug}-{first}-{last}.csv"
    rows = list(csv.DictReader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    screenshot("usage-downloaded")

    request = urllib.request.Request(
        f"{base}/api/v1/usage?start={first}T00:00:00Z&end={last + timedelta(days=1)}T00:00:00Z"
        "&group_by=instance",
        headers={"Authorization": f"Bearer {secret}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        api = json.load(response)
    assert rows[-1]["group"] == "TOTAL"
    assert Decimal(rows[-1]["cost"]) == Decimal(api["total_cost"])
    assert Decimal(api["total_cost"]).quantize(Decimal("0.01")) == Decimal("15.75")
    costs = {row["label"]: Decimal(row["cost"]) for row in rows[:-1]}
    assert costs == {row["label"]: Decimal(row["cost"]) for row in api["rows"]}


def test_usage_page_on_a_phone(
    live_server, transactional_db, memory_backend, page: Page, screenshot
):
    """The picker, the chart and the tables fit a narrow screen (tables scroll inside)."""
    now = timezone.now()
    with time_machine.travel(now - timedelta(days=2), tick=False):
        world = World()
    with time_machine.travel(now - timedelta(hours=5), tick=False) as clock:
        first = launch(world, "pocket-llm")
        clock.move_to(now - timedelta(hours=3))
        terminate(world, first)
    user = factories.user("phone@example.com", email_verified_at=timezone.now())
    factories.member(world.org, "viewer", user)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill("phone@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/usage/?start={(now - timedelta(days=6)).date()}&end={now.date()}")
    expect(page.get_by_test_id("usage-total")).to_have_text("7.00 USD")  # 2 h at 3.50
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the usage page scrolls sideways ({width}px)"
    screenshot("usage-phone")
