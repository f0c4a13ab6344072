"""WeChat Pay (API v3) top-ups against the local gateway: Native QR code, notifications signed
with the platform key and encrypted with the APIv3 key, forgeries, replays, mismatches, lost
notifications, refunds."""

import json
import time
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from billing.models import PaymentStatus, WebhookEvent
from tests.billing.wallets.gateways import rsa_key
from tests.billing.wallets.helpers import ledger, top_up

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wallet_settings")]

NOTIFY = "http://testserver/webhooks/wechatpay/"


def test_native_qr_then_notification_credits_once_and_the_page_shows_success(
    cny_org, owner_client, gateways
):
    payment = top_up(owner_client, "wechatpay", "123.45")
    assert payment.provider == "wechatpay" and payment.qr_payload.startswith("weixin://wxpay/")
    order = gateways.wechatpay.orders[payment.checkout_id]
    assert order["amount"] == {"total": 12345, "currency": "CNY"}  # fen
    assert order["notify_url"] == NOTIFY
    assert not gateways.wechatpay.rejected  # every request carried a valid merchant signature
    html = owner_client.get(f"/billing/pay/{payment.pk}/").content.decode()
    assert "<svg" in html and 'hx-trigger="every 2s"' in html
    assert "Alipay page" not in html

    notification = gateways.wechatpay.pay(payment.checkout_id)
    answer = notification.post(owner_client)
    assert answer.status_code == 204
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.provider_trade_id == order["transaction_id"]
    assert ledger(cny_org) == [("top_up", Decimal("123.45"))]
    status = owner_client.get(f"/billing/pay/{payment.pk}/status/").content.decode()
    assert "Paid" in status and "hx-trigger" not in status

    # Delivered again (WeChat Pay retries until it hears 2xx): nothing changes.
    assert notification.post(owner_client).status_code == 204
    assert ledger(cny_org) == [("top_up", Decimal("123.45"))]
    event = WebhookEvent.objects.get(provider="wechatpay")
    assert event.type == "wechatpay.TRANSACTION.SUCCESS"
    assert event.payload["resource"]["out_trade_no"] == payment.checkout_id


@pytest.mark.parametrize(
    "forgery",
    [
        {"sign_key": "other"},  # signed with a key that is not the platform's
        {"apiv3_key": "0" * 32},  # encrypted with another APIv3 key
        {"serial": "PUB_KEY_ID_SOMEONE_ELSE"},  # names a key the portal does not trust
        {"timestamp": int(time.time()) - 3600},  # an old notification replayed
    ],
)
def test_forged_or_stale_notifications_are_refused(cny_org, owner_client, gateways, forgery):
    payment = top_up(owner_client, "wechatpay")
    if forgery.get("sign_key") == "other":
        forgery = {"sign_key": rsa_key()}
    answer = gateways.wechatpay.pay(payment.checkout_id, **forgery).post(owner_client)
    assert answer.status_code in (400, 401)
    assert answer.json()["code"] == "FAIL" and answer.json()["message"]
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and ledger(cny_org) == []
    assert not WebhookEvent.objects.exists()


def test_a_tampered_body_is_refused(cny_org, owner_client, gateways):
    payment = top_up(owner_client, "wechatpay")
    genuine = gateways.wechatpay.pay(payment.checkout_id)
    envelope = json.loads(genuine.body)
    envelope["event_type"] = "TRANSACTION.SUCCESS "
    genuine.body = json.dumps(envelope).encode()
    assert genuine.post(owner_client).status_code == 401
    assert ledger(cny_org) == []


@pytest.mark.parametrize(("total", "currency"), [(100, None), (10001, None), (None, "USD")])
def test_amount_or_currency_mismatch_credits_nothing_and_flags_the_payment(
    cny_org, owner_client, gateways, total, currency
):
    payment = top_up(owner_client, "wechatpay", "100")
    answer = gateways.wechatpay.pay(payment.checkout_id, total=total, currency=currency).post(
        owner_client
    )
    assert answer.status_code == 204
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and payment.flag_reason
    assert ledger(cny_org) == []
    # Asking WeChat Pay gives the same mismatch: still nothing.
    with time_machine.travel(timezone.now() + timezone.timedelta(minutes=10)):
        from billing.payments.wallets import wallets_reconcile

        wallets_reconcile()
    assert ledger(cny_org) == []


def test_a_notification_for_an_unknown_order_answers_fail(cny_org, owner_client, gateways):
    resource = {
        "mchid": gateways.wechatpay.MCH_ID,
        "appid": gateways.wechatpay.APP_ID,
        "out_trade_no": "0" * 32,
        "transaction_id": "4200000000000000000000000000",
        "trade_state": "SUCCESS",
        "amount": {"total": 100, "currency": "CNY"},
    }
    answer = gateways.wechatpay.notification_for(resource, url=NOTIFY).post(owner_client)
    assert answer.status_code == 404 and answer.json()["code"] == "FAIL"
    assert not WebhookEvent.objects.exists() and ledger(cny_org) == []


def test_a_lost_notification_is_recovered_by_the_beat_task(cny_org, owner_client, gateways):
    from billing.payments.tasks import wallets_reconcile

    payment = top_up(owner_client, "wechatpay", "50")
    gateways.wechatpay.pay(payment.checkout_id)  # paid; the notification never arrives
    assert wallets_reconcile.delay().get() == "0 succeeded, 0 expired, 0 pending"  # too young
    with time_machine.travel(timezone.now() + timezone.timedelta(minutes=5)):
        assert wallets_reconcile.delay().get() == "1 succeeded, 0 expired, 0 pending"
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert ledger(cny_org) == [("top_up", Decimal("50"))]
    # The notification arriving late changes nothing.
    assert gateways.wechatpay.pay(payment.checkout_id).post(owner_client).status_code == 204
    assert ledger(cny_org) == [("top_up", Decimal("50"))]


def test_an_unpaid_code_expires_and_is_closed_at_wechat_pay(cny_org, owner_client, gateways):
    from billing.payments.wallets import wallets_reconcile

    payment = top_up(owner_client, "wechatpay", "50")
    with time_machine.travel(timezone.now() + timezone.timedelta(minutes=31)):
        assert wallets_reconcile()["expired"] == 1
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.CANCELED
    assert gateways.wechatpay.orders[payment.checkout_id]["trade_state"] == "CLOSED"
    status = owner_client.get(f"/billing/pay/{payment.pk}/status/").content.decode()
    assert "Expired" in status and "hx-trigger" not in status


def test_refund_goes_through_wechat_pay(cny_org, owner_client, gateways, admin_client):
    payment = top_up(owner_client, "wechatpay", "100")
    gateways.wechatpay.pay(payment.checkout_id).post(owner_client)
    response = admin_client.post(
        f"/admin/billing/payment/{payment.pk}/refund/", {"amount": "100.00", "reason": "Duplicate"}
    )
    assert response.status_code == 302
    payment.refresh_from_db()
    assert payment.refunded_amount == Decimal("100")
    sent = gateways.wechatpay.refunds[0]
    assert sent["amount"] == {"refund": 10000, "total": 10000, "currency": "CNY"}
    assert sent["out_trade_no"] == payment.checkout_id
    refund = payment.refunds.get()
    assert refund.status == "succeeded" and refund.provider_id == sent["refund_id"]
    assert ledger(cny_org) == [("refund", Decimal("-100")), ("top_up", Decimal("100"))]
    # WeChat Pay's refund notification afterwards records nothing twice.
    resource = {
        "mchid": gateways.wechatpay.MCH_ID,
        "out_trade_no": payment.checkout_id,
        "transaction_id": payment.provider_trade_id,
        "out_refund_no": sent["out_refund_no"],
        "refund_id": sent["refund_id"],
        "refund_status": "SUCCESS",
        "amount": {"total": 10000, "refund": 10000, "payer_total": 10000, "payer_refund": 10000},
    }
    notice = gateways.wechatpay.notification_for(resource, event_type="REFUND.SUCCESS", url=NOTIFY)
    assert notice.post(owner_client).status_code == 204
    assert ledger(cny_org) == [("refund", Decimal("-100")), ("top_up", Decimal("100"))]
