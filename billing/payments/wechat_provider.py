"""WeChat Pay API v3 as a wallet, through the ``wechatpayv3`` package, unchanged.

- Native pay (``POST /v3/pay/transactions/native``) gives the ``code_url`` the payment page draws;
  amounts are integers in fen, ``out_trade_no`` is the portal's payment reference;
- notifications (JSON to ``/webhooks/wechatpay/``) are verified against WeChat Pay's platform
  public key (``Wechatpay-Signature`` over timestamp, nonce and body; the ``Wechatpay-Serial``
  must name the configured key, the timestamp must be recent) and their resource decrypted with
  AEAD_AES_256_GCM and the APIv3 key — both by the SDK's ``callback``;
- the order query by ``out_trade_no`` settles a payment whose notification was lost;
- refunds through ``POST /v3/refund/domestic/refunds``; closing an expired order.

The SDK checks the platform signature on every answer too. It is used in its "platform public
key" mode (``public_key`` and ``public_key_id``); a platform certificate may be configured in
place of the key, its serial number then being the key id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.errors import BillingErrorCode
from billing.payments.base import PaymentProviderError, RefundResult, WebhookSignatureInvalid
from billing.payments.wallets import (
    TradeCreated,
    TradeState,
    WalletNotice,
    WalletProvider,
    reference_for,
)
from portal.money import from_minor, to_minor

log = logging.getLogger(__name__)

TRADE_STATE = {
    "SUCCESS": "succeeded",
    "REFUND": "succeeded",  # paid, then (partly) refunded
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "closed",
}


def platform_key() -> tuple[str, str]:
    """(public key PEM, key id) of WeChat Pay's platform, from a public key or a certificate."""
    pem, key_id = settings.WECHATPAY_PUBLIC_KEY, settings.WECHATPAY_PUBLIC_KEY_ID
    if "BEGIN CERTIFICATE" in pem:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        certificate = x509.load_pem_x509_certificate(pem.encode())
        pem = (
            certificate.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        key_id = key_id or format(certificate.serial_number, "X")
    return pem, key_id


class WeChatPayProvider(WalletProvider):
    name = "wechatpay"
    label = gettext_lazy("WeChat Pay")

    def configured(self) -> bool:
        return bool(
            settings.WECHATPAY_MCH_ID
            and settings.WECHATPAY_APP_ID
            and settings.WECHATPAY_PRIVATE_KEY
            and settings.WECHATPAY_CERT_SERIAL_NO
            and settings.WECHATPAY_APIV3_KEY
            and settings.WECHATPAY_PUBLIC_KEY
            and platform_key()[1]
        )

    def currencies(self) -> list[str]:
        return list(settings.WECHATPAY_CURRENCIES)

    @property
    def notify_url(self) -> str:
        return settings.WECHATPAY_NOTIFY_URL_BASE + reverse("billing:wechatpay_notify")

    def client(self):
        from wechatpayv3 import WeChatPay, WeChatPayType

        public_key, public_key_id = platform_key()
        client = WeChatPay(
            wechatpay_type=WeChatPayType.NATIVE,
            mchid=settings.WECHATPAY_MCH_ID,
            private_key=settings.WECHATPAY_PRIVATE_KEY,
            cert_serial_no=settings.WECHATPAY_CERT_SERIAL_NO,
            appid=settings.WECHATPAY_APP_ID,
            apiv3_key=settings.WECHATPAY_APIV3_KEY,
            notify_url=self.notify_url,
            timeout=(5, 15),
            public_key=public_key,
            public_key_id=public_key_id,
        )
        # wechatpayv3 hard-codes its host in ``Core._gate_way`` and takes no parameter for it;
        # setting it is the one change, so that WECHATPAY_GATEWAY can name another host (tests:
        # a local server).
        client._core._gate_way = settings.WECHATPAY_GATEWAY.rstrip("/")
        return client

    def _call(self, method: str, **kwargs) -> tuple[int, dict]:
        """One API call through the SDK, which signs it and checks the answer's signature."""
        try:
            code, message = getattr(self.client(), method)(**kwargs)
        except Exception as exc:  # the SDK raises bare Exception (bad signature); requests' too
            log.warning("WeChat Pay %s failed: %s", method, exc)
            raise PaymentProviderError(
                _("WeChat Pay cannot be reached or answered wrongly; try again in a moment."),
                code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
            ) from None
        try:
            body = json.loads(message) if message else {}
        except (TypeError, ValueError):
            body = {}
        return code, body if isinstance(body, dict) else {}

    @staticmethod
    def _refused(code: int, body: dict) -> PaymentProviderError:
        return PaymentProviderError(
            _("WeChat Pay refused the request: %(detail)s")
            % {"detail": body.get("message") or body.get("code") or code},
            code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
        )

    def trade_create(self, payment) -> TradeCreated:
        expire = timezone.localtime(
            payment.expires_at or timezone.now() + timedelta(minutes=30),
            timezone.get_fixed_timezone(8 * 60),
        )
        code, body = self._call(
            "pay",
            description=_("GPU cloud credit top-up"),
            out_trade_no=payment.checkout_id,
            amount={
                "total": to_minor(payment.amount, payment.currency),
                "currency": payment.currency,
            },
            time_expire=expire.isoformat(timespec="seconds"),
            notify_url=self.notify_url,
        )
        if code != 200 or not body.get("code_url"):
            raise self._refused(code, body)
        return TradeCreated(qr_payload=body["code_url"])

    def trade_query(self, payment) -> TradeState:
        code, body = self._call("query", out_trade_no=payment.checkout_id)
        if code == 404:
            return TradeState("pending")
        if code != 200:
            raise self._refused(code, body)
        amount = body.get("amount") or {}
        currency = amount.get("currency") or ""
        total = amount.get("total")
        return TradeState(
            TRADE_STATE.get(body.get("trade_state", ""), "pending"),
            trade_id=body.get("transaction_id", ""),
            amount=from_minor(int(total), currency or payment.currency)
            if isinstance(total, int)
            else None,
            currency=currency,
        )

    def trade_close(self, payment) -> None:
        code, body = self._call("close", out_trade_no=payment.checkout_id)
        if code not in (200, 204):
            raise self._refused(code, body)

    def refund(self, refund) -> RefundResult:
        payment = refund.payment
        code, body = self._call(
            "refund",
            out_refund_no=reference_for(refund.idempotency_key),
            amount={
                "refund": to_minor(refund.amount, payment.currency),
                "total": to_minor(payment.amount, payment.currency),
                "currency": payment.currency,
            },
            out_trade_no=payment.checkout_id,
            reason=refund.reason[:80],
            notify_url=self.notify_url,
        )
        if code != 200 or not body.get("refund_id"):
            raise self._refused(code, body)
        status = "succeeded" if body.get("status") == "SUCCESS" else "pending"
        return RefundResult(provider_id=body["refund_id"], status=status)

    def notification(
        self, body: bytes, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> WalletNotice:
        lowered = {key.lower(): value for key, value in headers.items()}
        serial = lowered.get("wechatpay-serial", "")
        if not serial or serial != platform_key()[1]:
            # Checked first: the SDK would otherwise download certificates for an unknown serial.
            raise WebhookSignatureInvalid(_("The WeChat Pay notification names an unknown key."))
        stamp = lowered.get("wechatpay-timestamp", "")
        if (
            not stamp.isdigit()
            or abs(time.time() - int(stamp)) > settings.WEBHOOK_TOLERANCE_SECONDS
        ):
            raise WebhookSignatureInvalid(_("The WeChat Pay notification is too old or undated."))
        try:
            data = self.client().callback(lowered, body)
        except Exception:  # the SDK raises bare Exception for unknown algorithms
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("resource"), dict):
            raise WebhookSignatureInvalid(
                _("The WeChat Pay notification's signature or encryption is not valid.")
            )
        resource = data["resource"]
        if resource.get("mchid", settings.WECHATPAY_MCH_ID) != settings.WECHATPAY_MCH_ID:
            raise WebhookSignatureInvalid(_("The WeChat Pay notification is for another merchant."))
        event_type = str(data.get("event_type", ""))
        amount = resource.get("amount") or {}
        payload = {key: value for key, value in data.items() if key != "resource"}
        payload["resource"] = resource  # decrypted: order data only, no key material
        common = {
            "event_id": str(data.get("id") or "")[:255],
            "type": f"wechatpay.{event_type}"[:100],
            "out_trade_no": resource.get("out_trade_no", ""),
            "trade_id": resource.get("transaction_id", ""),
            "payload": payload,
        }
        if not common["event_id"]:
            raise WebhookSignatureInvalid(_("The WeChat Pay notification has no id."))
        if event_type.startswith("REFUND."):
            refunded = amount.get("refund")
            return WalletNotice(
                kind="refund",
                status="succeeded" if resource.get("refund_status") == "SUCCESS" else "",
                amount=from_minor(int(refunded), amount.get("currency") or "CNY")
                if isinstance(refunded, int)
                else None,
                refund_id=resource.get("refund_id", ""),
                out_refund_no=resource.get("out_refund_no", ""),
                **common,
            )
        total = amount.get("total")
        currency = amount.get("currency") or ""
        if resource.get("appid", settings.WECHATPAY_APP_ID) != settings.WECHATPAY_APP_ID:
            raise WebhookSignatureInvalid(_("The WeChat Pay notification is for another app."))
        return WalletNotice(
            status=TRADE_STATE.get(resource.get("trade_state", ""), "pending"),
            amount=from_minor(int(total), currency or "CNY") if isinstance(total, int) else None,
            currency=currency,
            **common,
        )
