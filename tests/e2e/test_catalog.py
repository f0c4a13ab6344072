"""The public catalog in a browser: filters and sorting update the list in place and stay in
the URL; sold-out types stay visible."""

import re

import pytest
from playwright.sync_api import Page, expect

from portal.catalog.demo import load_demo_catalog

pytestmark = pytest.mark.browser


def offer_names(page: Page) -> list[str]:
    return [name.strip() for name in page.locator("#offer-list article h2").all_inner_texts()]


def offer_prices(page: Page) -> list[float]:
    texts = page.locator("#offer-list .price").all_inner_texts()
    return [float(re.search(r"([\d.]+) USD", t).group(1)) for t in texts]


def test_catalog_filters_and_sorts_without_reloading(
    live_server, transactional_db, page: Page, screenshot
):
    load_demo_catalog()
    page.goto(f"{live_server.url}/catalog/")
    expect(page.get_by_role("heading", name="GPU instances")).to_be_visible()
    total = len(offer_names(page))
    assert total > 20
    prices = offer_prices(page)
    assert prices == sorted(prices)  # cheapest first by default
    assert page.locator("#offer-list .badge", has_text="Sold out").count() > 0
    page.evaluate("window.__sameDocument = true")
    screenshot("catalog")

    page.get_by_label("GPU", exact=True).select_option("h200-sxm-141gb")
    expect(page).to_have_url(re.compile(r"gpu_model=h200-sxm-141gb"))
    expect(page.locator("#offer-list article").first).to_contain_text("H200")
    names = offer_names(page)
    assert names and all("h200" in name for name in names)

    page.get_by_label("GPUs", exact=True).select_option("8")
    expect(page.locator("#offer-list article")).to_have_count(1)
    assert offer_names(page) == ["gpu_8x_h200_sxm"]

    page.get_by_label("GPUs", exact=True).select_option("")
    page.get_by_label("Sort by").select_option("tflops_per_dollar")
    expect(page).to_have_url(re.compile(r"sort=tflops_per_dollar"))
    page.get_by_label("Max price / hour").fill("2")
    expect(page).to_have_url(re.compile(r"max_price=2"))
    expect(page.locator("#offer-list")).not_to_contain_text("gpu_8x_h200_sxm")
    assert all(p <= 2 for p in offer_prices(page))

    page.get_by_label("Region").select_option("europe-central-1")
    page.get_by_label("Available now").check()
    expect(page).to_have_url(re.compile(r"available=on"))
    expect(page.locator("#offer-list article").first).to_be_visible()
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of htmx"
    screenshot("catalog-filtered")

    # The URL keeps the filters: a fresh visit shows the same list.
    filtered = offer_names(page)
    page.goto(page.url)
    assert offer_names(page) == filtered
    expect(page.get_by_label("Region")).to_have_value("europe-central-1")

    page.get_by_label("Max price / hour").fill("0.01")
    expect(page.get_by_text("No instance type matches these filters.")).to_be_visible()
