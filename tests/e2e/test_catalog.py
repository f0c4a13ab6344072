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


# Every text of a sold-out card: its colour and the colour behind it as the browser paints them
# (backgrounds composited up the tree, opacity of the card and its ancestors blended over the
# page's background).
_SOLD_OUT_COLOURS = """
() => {
  const rgba = (css) => {
    const m = css.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return [0, 0, 0, 0];
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, below) => {  // top composited over an opaque colour
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + below[i] * (1 - a));
  };
  const page = rgba(getComputedStyle(document.body).backgroundColor);
  const found = [];
  for (const card of document.querySelectorAll("article.offer.sold-out")) {
    const walker = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const node = walker.currentNode;
      if (!node.textContent.trim()) continue;
      const el = node.parentElement;
      if (!el.checkVisibility()) continue;
      const chain = [];
      for (let e = el; e; e = e.parentElement) chain.push(e);
      let behind = page.slice(0, 3);
      let opacity = 1;
      for (const e of chain.slice().reverse()) {
        behind = over(rgba(getComputedStyle(e).backgroundColor), behind);
        opacity *= Number(getComputedStyle(e).opacity);
      }
      const text = over(rgba(getComputedStyle(el).color), behind);
      found.push({
        text: node.textContent.trim().slice(0, 40),
        color: over([...text, opacity], page.slice(0, 3)),
        background: over([...behind, opacity], page.slice(0, 3)),
      });
    }
  }
  return found;
}
"""


def _luminance(rgb) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(foreground, background) -> float:
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_contrast_formula_matches_wcag():
    assert round(contrast((0, 0, 0), (255, 255, 255)), 1) == 21.0
    assert round(contrast((0x76, 0x76, 0x76), (255, 255, 255)), 2) == 4.54  # WCAG's AA grey


def test_sold_out_cards_keep_their_text_readable(live_server, transactional_db, page: Page):
    """WCAG AA: every text on a sold-out card has 4.5:1 against what is behind it, as
    Chromium computes the colours (the card used to be faded with opacity)."""
    load_demo_catalog()
    page.goto(f"{live_server.url}/catalog/")
    cards = page.locator("article.offer.sold-out")
    assert cards.count() > 0
    for summary in cards.locator("summary").all()[:3]:
        summary.click()  # the region table inside counts too
    texts = page.evaluate(_SOLD_OUT_COLOURS)
    assert len(texts) > 10
    poor = [
        (t["text"], round(contrast(t["color"], t["background"]), 2))
        for t in texts
        if contrast(t["color"], t["background"]) < 4.5
    ]
    assert not poor, f"text below 4.5:1 on sold-out cards: {poor[:10]}"
