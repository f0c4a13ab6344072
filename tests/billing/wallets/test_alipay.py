"""Alipay top-ups against the local gateway: QR code, verified notification, page poll,
forged / replayed / mismatching notifications, lost notifications, refunds."""

from decimal import Decimal

import pytest

from billing.models import LedgerEntry, Payment, PaymentStatus, WebhookEvent
from tests.billing.wallets.gateways import rsa_key
from tests.billing.wallets.helpers import ledger, top_up

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wallet_settings")]


def test_qr_then_paid_notification_credits_once_and_the_page_shows_success(
    cny_org, owner_client, gateways
):
    payment = top_up(owner_client, "alipay", "100")
    assert payment.provider == "alipay" and payment.status == PaymentStatus.PENDING
    assert payment.qr_payload.startswith("https://qr.alipay.com/")
    order = gateways.alipay.orders[payment.checkout_id]
    assert order["total_amount"] == "100.00"
    assert order["notify_url"] == "http://testserver/webhooks/alipay/"
    assert payment.pay_url.startswith(gateways.alipay.gateway + "?")
    assert "alipay.trade.page.pay" in payment.pay_url

    page = owner_client.get(f"/billing/pay/{payment.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "<svg" in html and 'hx-trigger="every 2s"' in html
    assert "Or pay on the Alipay page" in html
    assert ledger(cny_org) == []

    # Coming back from Alipay's page credits nothing.
    owner_client.get(f"/billing/pay/{payment.pk}/?out_trade_no={payment.checkout_id}")
    assert ledger(cny_org) == []

    notification = gateways.alipay.pay(payment.checkout_id)
    answer = notification.post(owner_client)
    assert answer.status_code == 200 and answer.content == b"success"
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.provider_trade_id == gateways.alipay.orders[payment.checkout_id]["trade_no"]
    assert ledger(cny_org) == [("top_up", Decimal("100"))]
    entry = LedgerEntry.objects.get(account__organization=cny_org)
    assert entry.description == "Top-up paid by Alipay" and entry.payment_id == payment.pk

    status = owner_client.get(f"/billing/pay/{payment.pk}/status/").content.decode()
    assert "Paid" in status and "hx-trigger" not in status
    assert "/billing/" in status

    # The same notification again: acknowledged, nothing changes.
    again = notification.post(owner_client)
    assert again.content == b"success"
    assert ledger(cny_org) == [("top_up", Decimal("100"))]
    assert WebhookEvent.objects.filter(provider="alipay").count() == 1


def test_a_forged_notification_is_refused_and_credits_nothing(cny_org, owner_client, gateways):
    payment = top_up(owner_client, "alipay")
    forged = gateways.alipay.pay(payment.checkout_id, sign_key=rsa_key())
    answer = forged.post(owner_client)
    assert answer.status_code == 400 and answer.content != b"success"
    # A good signature over other values is no better: one changed field breaks it.
    genuine = gateways.alipay.pay(payment.checkout_id)
    tampered = {**genuine.form, "total_amount": "10000.00"}
    from urllib.parse import urlencode

    answer = owner_client.post(
        "/webhooks/alipay/", urlencode(tampered), content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 400
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and ledger(cny_org) == []
    assert not WebhookEvent.objects.filter(provider="alipay").exists()


def test_a_notification_signed_for_another_app_is_refused(cny_org, owner_client, gateways):
    payment = top_up(owner_client, "alipay")
    answer = gateways.alipay.pay(payment.checkout_id, app_id="2021999999999999").post(owner_client)
    assert answer.status_code == 400 and ledger(cny_org) == []


def test_a_second_notification_for_the_same_trade_credits_once(cny_org, owner_client, gateways):
    payment = top_up(owner_client, "alipay", "88.80")
    first = gateways.alipay.pay(payment.checkout_id)
    second = gateways.alipay.pay(payment.checkout_id)  # a new notify_id, the same trade
    assert first.post(owner_client).content == b"success"
    assert second.post(owner_client).content == b"success"
    assert first.post(owner_client).content == b"success"
    assert ledger(cny_org) == [("top_up", Decimal("88.80"))]
    assert WebhookEvent.objects.filter(provider="alipay").count() == 2


@pytest.mark.parametrize(("amount", "currency"), [("1.00", None), ("100.01", None), (None, "USD")])
def test_amount_or_currency_mismatch_credits_nothing_and_flags_the_payment(
    cny_org, owner_client, gateways, amount, currency
):
    payment = top_up(owner_client, "alipay", "100")
    notification = gateways.alipay.pay(payment.checkout_id, amount=amount, currency=currency)
    answer = notification.post(owner_client)
    assert answer.content == b"success"  # received and recorded; a retry would not help
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and payment.flag_reason
    assert ledger(cny_org) == []
    event = WebhookEvent.objects.get(provider="alipay")
    assert "flagged" in event.outcome
    from portal.accounts.models import AuditEvent

    assert AuditEvent.objects.filter(action="payment.wallet_mismatch").count() == 1
    # The query says the same: still nothing, and the page says it is under review.
    status = owner_client.get(f"/billing/pay/{payment.pk}/status/").content.decode()
    assert "Under review" in status and "hx-trigger" not in status
    assert ledger(cny_org) == []


def test_a_notification_for_an_unknown_order_is_refused_and_stores_nothing(
    cny_org, owner_client, gateways
):
    payment = top_up(owner_client, "alipay")
    notification = gateways.alipay.pay(payment.checkout_id)
    # The order exists at the wallet but not (yet) here: Alipay is told to deliver it again.
    real = payment.checkout_id
    Payment.objects.filter(pk=payment.pk).update(checkout_id="not-committed-yet")
    answer = notification.post(owner_client)
    assert answer.status_code == 404 and answer.content != b"success"
    assert not WebhookEvent.objects.exists() and ledger(cny_org) == []
    # Once the order is there, the redelivery credits it, once.
    Payment.objects.filter(pk=payment.pk).update(checkout_id=real)
    assert notification.post(owner_client).content == b"success"
    assert notification.post(owner_client).content == b"success"
    assert ledger(cny_org) == [("top_up", Decimal("100"))]


def test_a_lost_notification_is_recovered_by_the_page_poll(
    cny_org, owner_client, gateways, wallet_settings
):
    import time_machine
    from django.utils import timezone

    payment = top_up(owner_client, "alipay")
    status_url = f"/billing/pay/{payment.pk}/status/"
    # Before anyone scans, Alipay has no trade: the poll keeps waiting.
    gateways.alipay.pay(payment.checkout_id)  # paid; the notification is lost
    assert "hx-trigger" in owner_client.get(status_url).content.decode()  # too early to ask
    assert ledger(cny_org) == []
    with time_machine.travel(timezone.now() + timezone.timedelta(seconds=30)):
        html = owner_client.get(status_url).content.decode()
    assert "Paid" in html
    assert ledger(cny_org) == [("top_up", Decimal("100"))]
    assert [r for r, _ in gateways.alipay.requests if r == "alipay.trade.query"]


def test_refund_goes_through_alipay_and_takes_the_credit_back(
    cny_org, owner_client, gateways, admin_client
):
    payment = top_up(owner_client, "alipay", "100")
    gateways.alipay.pay(payment.checkout_id).post(owner_client)
    response = admin_client.post(
        f"/admin/billing/payment/{payment.pk}/refund/",
        {"amount": "40.00", "reason": "Customer asked"},
    )
    assert response.status_code == 302, response.content[:2000]
    payment.refresh_from_db()
    assert payment.refunded_amount == Decimal("40")
    refund = payment.refunds.get()
    assert refund.status == "succeeded"
    sent = gateways.alipay.refunds[0]
    assert sent["refund_amount"] == "40.00" and sent["out_trade_no"] == payment.checkout_id
    assert ledger(cny_org) == [("refund", Decimal("-40")), ("top_up", Decimal("100"))]
    listing = admin_client.get("/admin/billing/payment/").content.decode()
    assert payment.provider_trade_id in listing
