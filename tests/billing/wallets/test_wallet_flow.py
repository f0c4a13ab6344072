"""Choosing how to pay, the top-up API for wallets, and what the portal never shows."""

import pytest
from django.test import Client

from billing.models import Payment, PaymentStatus
from tests import factories
from tests.billing.wallets.helpers import ledger, top_up

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wallet_settings")]


def test_the_billing_page_offers_wallets_for_cny_and_says_they_cannot_auto_recharge(
    owner_client,
):
    html = owner_client.get("/billing/").content.decode()
    for value in ("card", "alipay", "wechatpay"):
        assert f'name="method" value="{value}"' in html
    assert "cannot be saved, so auto-recharge uses a card only" in html


def test_a_usd_organisation_sees_no_wallet_and_is_refused_one(db):
    org = factories.organization(credit_amount=None)  # USD
    client = Client()
    client.force_login(factories.member(org, "owner"))
    assert 'value="alipay"' not in client.get("/billing/").content.decode()
    response = client.post("/billing/top-up/", {"amount": "100", "method": "alipay"})
    assert response.status_code == 422
    assert "alipay is not available for payments in USD" in response.content.decode()
    assert not Payment.objects.exists()

    api = factories.api_client_for(org, "owner")
    answer = api.post("/api/v1/top-ups", {"amount": "100", "method": "wechatpay"}, format="json")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "payment_method_unavailable"
    assert answer.json()["error"]["details"]["available"] == ["card"]


def test_wallets_are_off_without_keys(cny_org, owner_client, settings):
    settings.ALIPAY_PRIVATE_KEY = ""
    settings.WECHATPAY_APIV3_KEY = ""
    html = owner_client.get("/billing/").content.decode()
    assert 'value="alipay"' not in html and 'value="wechatpay"' not in html
    response = owner_client.post("/billing/top-up/", {"amount": "100", "method": "alipay"})
    assert response.status_code == 422


def test_api_top_up_returns_the_qr_payload_and_page_and_never_a_key(cny_org, gateways):
    api = factories.api_client_for(cny_org, "owner")
    for method in ("alipay", "wechatpay"):
        created = api.post("/api/v1/top-ups", {"amount": "66.60", "method": method}, format="json")
        assert created.status_code == 201, created.content
        body = created.json()
        assert body["method"] == method and body["status"] == "pending"
        assert body["amount"] == "66.60" and body["currency"] == "CNY"
        assert body["qr_code"] and body["pay_page_url"].endswith(f"/billing/pay/{body['id']}/")
        assert (body["alipay_page_url"] != "") == (method == "alipay")
        shown = api.get(f"/api/v1/payments/{body['id']}")
        assert shown.status_code == 200 and shown.json()["status"] == "pending"
        for text in (created.content.decode(), shown.content.decode()):
            for secret in gateways.secrets():
                assert secret not in text
            assert "PRIVATE KEY" not in text
    # Paid, then shown as succeeded.
    payment = Payment.objects.get(provider="wechatpay")
    gateways.wechatpay.pay(payment.checkout_id).post(Client())
    assert api.get(f"/api/v1/payments/{payment.pk}").json()["status"] == "succeeded"


def test_the_pay_page_never_shows_a_key_and_belongs_to_its_organisation(
    cny_org, owner_client, gateways
):
    payment = top_up(owner_client, "alipay")
    html = owner_client.get(f"/billing/pay/{payment.pk}/").content.decode()
    for secret in gateways.secrets():
        assert secret not in html
    other = Client()
    other.force_login(factories.member(factories.organization(currency="CNY"), "owner"))
    assert other.get(f"/billing/pay/{payment.pk}/").status_code == 404
    assert other.get(f"/billing/pay/{payment.pk}/status/").status_code == 404
    assert (
        factories.api_client_for(factories.organization(), "owner")
        .get(f"/api/v1/payments/{payment.pk}")
        .status_code
        == 404
    )


def test_a_wallet_that_refuses_leaves_a_failed_payment_and_no_credit(
    cny_org, owner_client, settings
):
    settings.ALIPAY_APP_ID = "2021000000000999"  # the gateway does not know this app
    response = owner_client.post("/billing/top-up/", {"amount": "100", "method": "alipay"})
    assert response.status_code == 422
    assert "Alipay refused the request" in response.content.decode()
    payment = Payment.objects.get()
    assert payment.status == PaymentStatus.FAILED and ledger(cny_org) == []


def test_a_viewer_cannot_start_a_wallet_top_up(cny_org):
    client = Client()
    client.force_login(factories.member(cny_org, "viewer"))
    response = client.post("/billing/top-up/", {"amount": "100", "method": "wechatpay"})
    assert response.status_code == 403
    assert not Payment.objects.exists()


def test_api_top_up_by_card_still_goes_to_the_card_providers_page(db):
    org = factories.organization(credit_amount=None)  # USD, the fake card provider
    api = factories.api_client_for(org, "owner")
    created = api.post("/api/v1/top-ups", {"amount": "25"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["method"] == "card" and body["qr_code"] == "" and body["pay_page_url"] == ""
    assert "/billing/checkout/fake/" in body["checkout_url"]
    assert api.get(f"/api/v1/payments/{body['id']}").json()["checkout_url"] == ""
    viewer = factories.api_client_for(org, "viewer")
    assert viewer.post("/api/v1/top-ups", {"amount": "25"}, format="json").status_code == 403


def test_the_system_check_refuses_half_configured_wallets_and_bad_keys(settings):
    from billing.payments.wallets import wallet_settings_check

    assert wallet_settings_check() == []  # both whole, keys load
    settings.ALIPAY_PUBLIC_KEY = ""
    settings.WECHATPAY_PRIVATE_KEY = (
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----"
    )
    errors = {error.id: error.msg for error in wallet_settings_check()}
    assert "ALIPAY_PUBLIC_KEY" in errors["billing.E101"]
    assert "wechatpay keys do not load" in errors["billing.E102"]
    for name in ("ALIPAY_APP_ID", "ALIPAY_PRIVATE_KEY"):
        setattr(settings, name, "")
    settings.WECHATPAY_PRIVATE_KEY = ""
    assert [e.id for e in wallet_settings_check()] == ["billing.E101"]  # WeChat Pay half set


def test_the_billing_page_leads_back_to_a_wallet_payment_still_open(cny_org, owner_client):
    payment = top_up(owner_client, "wechatpay", "42")
    html = owner_client.get("/billing/").content.decode()
    assert f'href="/billing/pay/{payment.pk}/"' in html
    assert "Continue paying 42.00 CNY with WeChat Pay" in html
    Payment.objects.filter(pk=payment.pk).update(status=PaymentStatus.CANCELED)
    assert f"/billing/pay/{payment.pk}/" not in owner_client.get("/billing/").content.decode()
