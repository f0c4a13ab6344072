"""Wallet notifications racing the portal on PostgreSQL, with real threads: one that arrives
before the order is committed, and the same payment notified many times at once."""

import threading
from decimal import Decimal

import pytest
from django.db import close_old_connections, transaction
from django.test import Client

from billing.models import Payment, WebhookEvent
from tests import factories
from tests.billing.wallets.helpers import ledger

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("wallet_settings")]

NOTIFY = "http://testserver/webhooks/wechatpay/"


def _resource(gateways, out_trade_no: str, total: int = 10000) -> dict:
    return {
        "mchid": gateways.wechatpay.MCH_ID,
        "appid": gateways.wechatpay.APP_ID,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000000000000000000042",
        "trade_state": "SUCCESS",
        "amount": {"total": total, "currency": "CNY"},
    }


def _payment(org, reference: str) -> Payment:
    return Payment.objects.create(
        organization=org,
        purpose="top_up",
        amount=Decimal("100"),
        currency="CNY",
        provider="wechatpay",
        idempotency_key=f"top-up:{reference}",
        checkout_id=reference,
        created_by="test",
    )


def test_a_notification_before_the_order_is_committed_is_refused_then_credited_once(
    require_postgres, gateways
):
    org = factories.organization(credit_amount=None, currency="CNY")
    reference = "a" * 32
    created, release = threading.Event(), threading.Event()

    def create_and_hold():
        try:
            with transaction.atomic():
                _payment(org, reference)
                created.set()
                release.wait(10)
        finally:
            close_old_connections()

    writer = threading.Thread(target=create_and_hold)
    writer.start()
    assert created.wait(10)
    notification = gateways.wechatpay.notification_for(_resource(gateways, reference), url=NOTIFY)
    early = notification.post(Client())
    assert early.status_code == 404 and early.json()["code"] == "FAIL"
    release.set()
    writer.join(10)
    assert notification.post(Client()).status_code == 204
    assert notification.post(Client()).status_code == 204
    assert ledger(org) == [("top_up", Decimal("100"))]
    assert WebhookEvent.objects.filter(provider="wechatpay").count() == 1


def test_the_same_payment_notified_at_once_is_credited_once(require_postgres, gateways):
    org = factories.organization(credit_amount=None, currency="CNY")
    reference = "b" * 32
    _payment(org, reference)
    same = gateways.wechatpay.notification_for(_resource(gateways, reference), url=NOTIFY)
    others = [
        gateways.wechatpay.notification_for(_resource(gateways, reference), url=NOTIFY)
        for _ in range(2)
    ]
    deliveries = [same, same, same, *others]
    statuses, lock = [], threading.Lock()
    barrier = threading.Barrier(len(deliveries))

    def deliver(notification):
        try:
            barrier.wait()
            status = notification.post(Client()).status_code
        finally:
            close_old_connections()
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in deliveries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [204] * len(deliveries)
    assert ledger(org) == [("top_up", Decimal("100"))]
    assert WebhookEvent.objects.filter(provider="wechatpay").count() == 3
