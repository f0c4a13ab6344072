"""Topping up in a browser with the fake provider: a declined card, then a good one; the
payment history waits for the webhook; the balance shows the credit; a card is saved."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from billing.models import LedgerEntry
from tests import factories

pytestmark = pytest.mark.browser


def test_top_up_with_a_test_card_and_save_a_card(
    live_server, transactional_db, page: Page, screenshot
):
    org = factories.organization("Tensor Works", credit_amount=None)
    factories.member(
        org, "owner", factories.user("owner@example.com", email_verified_at=timezone.now())
    )
    base = live_server.url

    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("owner@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{base}/billing/")
    expect(page.get_by_test_id("balance")).to_have_text("0.00 USD")
    screenshot("billing-empty")

    page.get_by_label("Amount").fill("250")
    page.get_by_role("button", name="Continue to payment").click()
    expect(page.get_by_role("heading", name="Test checkout")).to_be_visible()
    expect(page.get_by_text("Pay 250.00 USD to add credit to Tensor Works")).to_be_visible()

    page.get_by_label("Card number").fill("4000 0000 0000 0002")
    page.get_by_label("Expiry (MM/YY)").fill("12/40")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay 250.00 USD").click()
    expect(page.get_by_text("Your card was declined.")).to_be_visible()
    screenshot("checkout-declined")
    assert not LedgerEntry.objects.exists()

    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Pay 250.00 USD").click()
    expect(page).to_have_url(re.compile(r"/billing/payments/\?returned=1$"))
    expect(page.get_by_text("Your payment is confirmed")).to_be_visible()
    expect(page.locator("#payment-list tbody tr").first).to_contain_text("Succeeded")
    screenshot("payment-confirmed")

    page.get_by_role("link", name="← Billing").click()
    expect(page.get_by_test_id("balance")).to_have_text("250.00 USD")
    expect(page.locator("table").last).to_contain_text("Top-up paid by card")

    page.get_by_role("button", name="Add a card").click()
    page.get_by_label("Card number").fill("5555 5555 5555 4444")
    page.get_by_label("Expiry (MM/YY)").fill("08/33")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Mastercard •••• 4444")).to_be_visible()
    expect(page.get_by_text("default", exact=True)).to_be_visible()
    screenshot("billing-with-card")
