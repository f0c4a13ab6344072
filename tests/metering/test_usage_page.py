"""The usage page and its CSV: the figures of GET /api/v1/usage, shown rounded and exported exact.

Usage is made by the lifecycle: instances are launched with the compute services (in-memory
backend), driven to running with ``instance_sync``, stopped or terminated, and their hours
closed with ``usage_close_hour``; time is frozen with time-machine. The last hours are left
open, so the page also shows live figures.

The fixture's story (gpu_1x_h200 at 3.50 USD/h, gpu_2x_h200 at 7.00 USD/h, storage 0.10 USD
per GB-month of 730 hours):

- ``alpha`` (1x) runs 3 May 09:30 → 12:00 (2.5 h, across two hour boundaries), then is
  stopped and keeps its boot disk until now;
- ``beta`` (2x) runs 3 May 23:00 → 4 May 01:30 (across midnight), then is terminated;
- now is 4 May 03:30; hours up to 01:00 are closed, 02:00 and 03:00 are live.
"""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine
from django.test import Client

from portal.accounts import roles
from portal.accounts.roles import Action, Role
from portal.compute import services as compute
from portal.metering import services, views
from portal.metering.forms import MAX_DAYS
from tests import factories
from tests.factories import QueryCounter, World

pytestmark = pytest.mark.django_db
START = datetime(2026, 5, 3, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 5, 4, 3, 30, tzinfo=UTC)
RANGE = "start=2026-05-01&end=2026-05-04"
API_RANGE = "start=2026-05-01T00:00:00Z&end=2026-05-05T00:00:00Z"
HTMX = {"HTTP_HX_REQUEST": "true"}
STORAGE_PER_GB_SECOND = Decimal("0.10") / Decimal(730 * 3600)
CENT = Decimal("0.01")


@pytest.fixture(autouse=True)
def _on_the_memory_backend(memory_backend):
    """Every test here runs instances on the in-memory backend (tests/conftest.py)."""


def launch(world: World, name: str, instance_type: str = "gpu_1x_h200"):
    instance, _ = compute.instance_launch(
        actor=world.actor(), request=world.request(name, instance_type)
    )
    compute.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == "running"
    return instance


def act(world: World, instance, action: str) -> None:
    compute.instance_action(actor=world.actor(), instance_id=instance.pk, action=action)
    while compute.instance_sync(instance_id=instance.pk):
        pass


def close_hours(first: datetime, last: datetime) -> None:
    hour = first.replace(minute=0)
    while hour <= last:
        services.usage_close_hour(hour_start=hour)
        hour += timedelta(hours=1)


@pytest.fixture
def usage():
    with time_machine.travel(START - timedelta(days=2), tick=False):
        world = World()
    with time_machine.travel(START, tick=False) as clock:
        alpha = launch(world, "alpha")
        clock.move_to(START + timedelta(hours=2, minutes=30))
        act(world, alpha, "stop")
        clock.move_to(datetime(2026, 5, 3, 23, 0, tzinfo=UTC))
        beta = launch(world, "beta", "gpu_2x_h200")
        clock.move_to(datetime(2026, 5, 4, 1, 30, tzinfo=UTC))
        act(world, beta, "terminate")
        clock.move_to(NOW)
        close_hours(START, datetime(2026, 5, 4, 1, 0, tzinfo=UTC))
    alpha.refresh_from_db()
    assert alpha.state == "stopped" and alpha.disk_gb > 0
    return world, alpha, beta


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def page_client(world: World, role: str = "viewer") -> Client:
    client = Client()
    client.force_login(factories.member(world.org, role))
    return client


def cells(html: str, section_id: str) -> list[list[str]]:
    """The rows of the table in the element with that id, as lists of cell texts."""
    match = re.search(rf'id="{section_id}".*?<table>(.*?)</table>', html, re.S)
    assert match, f"no table in #{section_id}"
    rows = re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)
    return [
        [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)
        ]
        for r in rows
    ]


def parse_csv(response) -> list[dict]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert list(rows[0].keys()) == list(views.CSV_COLUMNS)
    return rows


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


# --- the page ---------------------------------------------------------------------------------


def test_page_shows_the_range_rounded_for_display(usage, frozen):
    world, alpha, _ = usage
    disk = alpha.disk_gb
    response = page_client(world).get(f"/usage/?{RANGE}")
    assert response.status_code == 200
    html = response.content.decode()
    # 8.75 (alpha) + 17.50 (beta) + 15.5 h of alpha's kept disk (0.2123… USD)
    kept = Decimal(disk * 15 * 3600 + disk * 1800) * STORAGE_PER_GB_SECOND
    assert money(Decimal("26.25") + kept) == Decimal("26.46")
    assert re.search(r'data-testid="usage-total">26\.46 USD<', html)
    gb_months = Decimal(730 * 3600)
    assert cells(html, "by-day") == [
        ["Day", "Running time (hours)", "Kept boot disk (GB-months)", "Cost (USD)"],
        # 3 May: 2.5 h of alpha + 1 h of beta; alpha's disk 12:00 → 24:00
        ["Sun 3 May 2026", "3.50", f"{money(disk * 43200 / gb_months)}", "15.91"],
        # 4 May: 1.5 h of beta; alpha's disk 00:00 → 03:30 (02:00 on live, not closed yet)
        ["Mon 4 May 2026", "1.50", f"{money(disk * 12600 / gb_months)}", "10.55"],
        ["Total", "5.00", f"{money(disk * 55800 / gb_months)}", "26.46"],
    ]
    by_type = cells(html, "by-instance-type")
    assert [row[0] for row in by_type] == ["Instance type", "gpu_2x_h200", "gpu_1x_h200", "Total"]
    assert by_type[1][-1] == "17.50" and by_type[2][-1] == "8.96" and by_type[3][-1] == "26.46"
    by_instance = cells(html, "by-instance")
    assert [row[0] for row in by_instance] == ["Instance or volume", "beta", "alpha", "Total"]
    assert by_instance[2][1:] == ["2.50", f"{money(disk * 55800 / gb_months)}", "8.96"]
    assert f'href="/instances/{alpha.pk}/"' in html
    # the chart: an accessible inline SVG with one bar per day that cost something
    chart = re.search(r"<svg role=\"img\".*?</svg>", html, re.S).group(0)
    assert 'aria-labelledby="usage-chart-title usage-chart-desc"' in chart
    assert (
        '<title id="usage-chart-title">Cost per day in USD, 1 May 2026 to 4 May 2026</title>'
        in chart
    )
    assert re.findall(r"<rect [^>]*><title>([^<]*)</title>", chart) == [
        "Sun 3 May 2026: 15.91 USD",
        "Mon 4 May 2026: 10.55 USD",
    ]
    ticks = re.findall(r'text-anchor="end">([^<]*)</text>', chart)
    assert ticks == ["0", "5", "10", "15", "20"]  # four steps of a round amount above the peak
    assert "the highest day is Sun 3 May 2026, 15.91 USD" in chart
    assert "rounded to 2 decimals (half up) for display only" in html
    assert "/usage/export.csv?start=2026-05-01&amp;end=2026-05-04&amp;group_by=instance" in html


def test_without_dates_the_page_shows_this_month_to_today(usage, frozen):
    world, *_ = usage
    html = page_client(world).get("/usage/").content.decode()
    assert 'name="start" value="2026-05-01"' in html and 'name="end" value="2026-05-04"' in html
    assert re.search(r'aria-current="true">This month<', html)
    assert re.search(r'data-testid="usage-total">26\.46 USD<', html)
    assert 'href="/usage/?start=2026-04-01&amp;end=2026-04-30"' in html  # last month
    assert 'href="/usage/?start=2026-04-28&amp;end=2026-05-04"' in html  # last 7 days


def test_a_period_without_usage_says_so(usage, frozen):
    world, *_ = usage
    response = page_client(world).get("/usage/?start=2026-04-01&end=2026-04-30")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No usage in this period." in html
    assert re.search(r'data-testid="usage-total">0\.00 USD<', html)
    assert "<svg" not in html and "export.csv" not in html
    assert re.search(r'aria-current="true">Last month<', html)


def test_htmx_gets_the_panel_only(usage, frozen):
    world, *_ = usage
    client = page_client(world)
    response = client.get(f"/usage/?{RANGE}", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="usage-panel">') and "<html" not in html
    assert "26.46 USD" in html
    bad = client.get("/usage/?start=2026-05-04&end=2026-05-01", **HTMX)
    assert bad.status_code == 422  # base.html's htmx config swaps 422
    assert bad.content.decode().lstrip().startswith('<div id="usage-panel">')


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("start=2026-05-04&end=2026-05-01", "end", "The end date is before the start date."),
        ("start=2025-01-01&end=2026-05-04", "end", f"Choose at most {MAX_DAYS} days at a time."),
        ("start=2026-13-01&end=2026-05-04", "start", "Enter a date as YYYY-MM-DD."),
    ],
)
def test_bad_ranges_are_422_with_the_message_at_the_field(usage, frozen, query, field, message):
    world, *_ = usage
    client = page_client(world)
    response = client.get(f"/usage/?{query}")
    assert response.status_code == 422
    html = response.content.decode()
    error = re.search(rf'<ul class="errorlist" id="id_{field}_error"><li>(.*?)</li>', html)
    assert error and error.group(1) == message
    assert re.search(rf'<input[^>]*name="{field}"[^>]*aria-invalid="true"', html)
    assert "<svg" not in html
    export = client.get(f"/usage/export.csv?{query}")
    assert export.status_code == 422 and message in export.content.decode()


def test_csv_refuses_an_unknown_grouping(usage, frozen):
    world, *_ = usage
    response = page_client(world).get(f"/usage/export.csv?{RANGE}&group_by=planet")
    assert response.status_code == 422
    assert response.content.decode().startswith("group_by: Select a valid choice.")


def test_the_longest_range_allowed_is_the_apis(usage, frozen):
    world, *_ = usage
    first = datetime(2026, 5, 4).date() - timedelta(days=MAX_DAYS - 1)
    client = page_client(world)
    assert client.get(f"/usage/?start={first}&end=2026-05-04").status_code == 200
    assert (
        client.get(f"/usage/?start={first - timedelta(days=1)}&end=2026-05-04").status_code == 422
    )


# --- permissions ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_every_role_may_see_usage(usage, frozen, role):
    world, *_ = usage
    client = page_client(world, role)
    assert client.get("/usage/").status_code == 200
    assert client.get(f"/usage/export.csv?{RANGE}").status_code == 200
    assert 'href="/usage/"' in client.get("/").content.decode()  # the nav link


def test_a_role_without_instance_view_gets_403(usage, frozen, monkeypatch):
    world, *_ = usage
    client = page_client(world, "viewer")
    monkeypatch.setitem(
        roles.MATRIX, Role.VIEWER, roles.MATRIX[Role.VIEWER] - {Action.INSTANCE_VIEW}
    )
    assert client.get("/usage/").status_code == 403
    assert client.get(f"/usage/export.csv?{RANGE}").status_code == 403
    dashboard = client.get("/").content.decode()
    assert "Spend this month" not in dashboard and 'href="/usage/"' not in dashboard


def test_signed_out_visitors_are_sent_to_log_in():
    for url in ("/usage/", "/usage/export.csv"):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- the CSV ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["day", "instance", "instance_type", "meter"])
def test_csv_has_the_apis_figures_exactly(usage, frozen, key_client, group_by):
    world, *_ = usage
    response = page_client(world).get(f"/usage/export.csv?{RANGE}&group_by={group_by}")
    assert response["Content-Disposition"] == (
        f'attachment; filename="usage-{world.org.slug}-2026-05-01-2026-05-04.csv"'
    )
    lines = parse_csv(response)
    api = key_client("viewer", organization=world.org).get(
        f"/api/v1/usage?{API_RANGE}&group_by={group_by}"
    )
    body = api.json()
    total = lines.pop()
    assert total["group"] == "TOTAL" and total["currency"] == "USD"
    assert Decimal(total["cost"]) == Decimal(body["total_cost"])
    assert total["cost"] == format(Decimal(body["total_cost"]), "f")  # no rounding, no exponent
    assert {line["group"] for line in lines} == {group_by}
    by_key: dict[str, list[dict]] = {}
    for line in lines:
        by_key.setdefault(line["key"], []).append(line)
    assert list(by_key) == [row["key"] for row in body["rows"]]  # the API's order
    for row in body["rows"]:
        mine = by_key[row["key"]]
        assert {m["label"] for m in mine} == {row["label"]}
        assert {m["meter"]: Decimal(m["quantity"]) for m in mine} == {
            k: Decimal(v) for k, v in row["quantities"].items()
        }
        costs = [Decimal(m["cost"]) for m in mine]
        if len(mine) == 1:
            assert costs[0] == Decimal(row["cost"])
        else:
            # split by meter from the same records; Decimal keeps 28 significant digits, so
            # the sum may differ from the API's in the last digit, never more
            assert abs(sum(costs) - Decimal(row["cost"])) < Decimal("1e-24")
    units = {line["meter"]: line["unit"] for line in lines}
    assert units == {"instance.seconds": "second", "instance.disk_gb_seconds": "GB-second"}


def test_csv_by_meter_in_minor_units(usage, frozen):
    world, alpha, _ = usage
    lines = parse_csv(page_client(world).get(f"/usage/export.csv?{RANGE}&group_by=meter"))
    rows = {line["key"]: line for line in lines}
    assert Decimal(rows["instance.seconds"]["quantity"]) == 9000 + 9000
    assert Decimal(rows["instance.disk_gb_seconds"]["quantity"]) == alpha.disk_gb * 55800
    assert money(Decimal(rows["instance.seconds"]["cost"])) == Decimal("26.25")
    assert money(Decimal(rows["instance.disk_gb_seconds"]["cost"])) == Decimal("0.21")
    assert money(Decimal(lines[-1]["cost"])) == Decimal("26.46")


def test_a_whole_hour_costs_the_hourly_price_exactly(usage, frozen):
    world, *_ = usage
    lines = parse_csv(
        page_client(world).get(
            "/usage/export.csv?start=2026-05-04&end=2026-05-04&group_by=instance"
        )
    )
    beta = next(line for line in lines if line["label"] == "beta")
    assert Decimal(beta["quantity"]) == 5400  # 1.5 h at 7.00 USD/h
    assert Decimal(beta["cost"]) == Decimal("10.50")
    day = parse_csv(
        page_client(world).get(
            "/usage/export.csv?start=2026-05-03&end=2026-05-03&group_by=instance"
        )
    )
    beta = next(line for line in day if line["label"] == "beta")
    assert Decimal(beta["cost"]) == Decimal("7.00")


def test_csv_text_that_looks_like_a_formula_is_quoted():
    assert views._text("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert views._text("-1+1") == "'-1+1"
    assert views._text("alpha") == "alpha"


# --- queries and the dashboard ------------------------------------------------------------------


def test_page_queries_do_not_grow_with_instances():
    base = datetime(2026, 6, 10, 8, 15, tzinfo=UTC)
    with time_machine.travel(base - timedelta(days=1), tick=False):
        world = World(hosts=2)
    client = page_client(world)

    def run_instances(count: int, at: datetime) -> None:
        with time_machine.travel(at, tick=False) as clock:
            for n in range(count):
                clock.move_to(at + timedelta(minutes=n))
                instance = launch(world, f"run-{at:%H}-{n}", "gpu_1x_h200")
                clock.move_to(at + timedelta(hours=1, minutes=30 + n))
                act(world, instance, "terminate")

    def count_queries(now: datetime) -> int:
        with time_machine.travel(now, tick=False):
            close_hours(base, now - timedelta(hours=2))
            client.get("/usage/?start=2026-06-01&end=2026-06-10")  # warm (session, meters)
            with QueryCounter() as counted:
                response = client.get("/usage/?start=2026-06-01&end=2026-06-10")
            assert response.status_code == 200
        return counted.n

    run_instances(2, base)
    few = count_queries(base + timedelta(hours=4))
    run_instances(6, base + timedelta(hours=4))
    many = count_queries(base + timedelta(hours=8))
    assert few == many, (few, many)
    assert many < 60


def test_dashboard_shows_running_instances_spend_and_burn_rate(usage):
    world, *_ = usage
    with time_machine.travel(NOW - timedelta(hours=1), tick=False):
        launch(world, "gamma")  # 3.50 USD/h, one hour so far
    with time_machine.travel(NOW, tick=False):
        html = page_client(world).get("/").content.decode()
    assert re.search(r'data-testid="running-instances">1<', html)
    assert re.search(r'data-testid="burn-rate">3\.50 USD/h<', html)
    # 26.46… for alpha and beta, plus gamma's hour
    assert re.search(r'data-testid="month-to-date">29\.96 USD<', html)
    assert 'href="/usage/"' in html
