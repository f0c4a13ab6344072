"""Alipay (Open Platform) as a wallet, through the ``python-alipay-sdk`` package, unchanged.

- ``alipay.trade.precreate`` gives the ``qr_code`` the payment page draws; ``alipay.trade.page.pay``
  gives a link to pay on Alipay's desktop page instead (both for the same ``out_trade_no``, the
  portal's payment reference, and ``total_amount`` in yuan with two decimals);
- the asynchronous notification (form-encoded POST to ``/webhooks/alipay/``) is verified with
  RSA2 and Alipay's public key (the SDK's ``verify``), and must name the portal's app id;
- ``alipay.trade.query`` settles a payment whose notification was lost;
- ``alipay.trade.refund`` refunds (``out_request_no`` = the refund's idempotency key);
- ``alipay.trade.close`` stops the QR code of an expired payment.

Every answer of the gateway is checked by the SDK against Alipay's public key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from urllib.error import URLError

from django.conf import settings
from django.urls import reverse
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

log = logging.getLogger(__name__)

SUCCESS_CODE = "10000"
TRADE_STATUS = {
    "TRADE_SUCCESS": "succeeded",
    "TRADE_FINISHED": "succeeded",
    "WAIT_BUYER_PAY": "pending",
    "TRADE_CLOSED": "closed",
}


def yuan(amount: Decimal) -> str:
    """``total_amount``: yuan with exactly two decimals (CNY's minor unit, exact)."""
    return str(Decimal(amount).quantize(Decimal("0.01")))


class AlipayProvider(WalletProvider):
    name = "alipay"
    label = gettext_lazy("Alipay")

    def configured(self) -> bool:
        return bool(
            settings.ALIPAY_APP_ID and settings.ALIPAY_PRIVATE_KEY and settings.ALIPAY_PUBLIC_KEY
        )

    def currencies(self) -> list[str]:
        return list(settings.ALIPAY_CURRENCIES)

    @property
    def notify_url(self) -> str:
        return settings.ALIPAY_NOTIFY_URL_BASE + reverse("billing:alipay_notify")

    def client(self):
        from alipay import AliPay
        from alipay.utils import AliPayConfig

        client = AliPay(
            appid=settings.ALIPAY_APP_ID,
            app_notify_url=self.notify_url,
            app_private_key_string=settings.ALIPAY_PRIVATE_KEY,
            alipay_public_key_string=settings.ALIPAY_PUBLIC_KEY,
            sign_type="RSA2",
            config=AliPayConfig(timeout=15),
        )
        # python-alipay-sdk hard-codes its gateway (production, or the sandbox with debug=True)
        # in the attribute ``_gateway`` and takes no parameter for it; setting it is the one
        # change, so that ALIPAY_GATEWAY can name another gateway (tests: a local server).
        client._gateway = settings.ALIPAY_GATEWAY
        return client

    def _call(self, method: str, **kwargs) -> dict:
        """One gateway call through the SDK; its answer's signature is checked by the SDK."""
        from alipay.exceptions import AliPayException, AliPayValidationError

        try:
            return getattr(self.client(), method)(**kwargs)
        except AliPayValidationError:
            raise PaymentProviderError(
                _("Alipay's answer did not carry a valid signature."),
                code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
            ) from None
        except AliPayException as exc:
            raise PaymentProviderError(
                _("Alipay refused the request (%(code)s).") % {"code": exc.code},
                code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
            ) from None
        except (URLError, OSError, ValueError) as exc:
            log.warning("Alipay %s failed: %s", method, exc)
            raise PaymentProviderError(
                _("Alipay cannot be reached; try again in a moment."),
                code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
            ) from None

    @staticmethod
    def _refused(answer: dict) -> PaymentProviderError:
        detail = answer.get("sub_msg") or answer.get("msg") or answer.get("code")
        return PaymentProviderError(
            _("Alipay refused the request: %(detail)s") % {"detail": detail},
            code=BillingErrorCode.PAYMENT_PROVIDER_ERROR,
        )

    def _extra(self, payment) -> dict:
        extra = {"timeout_express": f"{settings.WALLET_PAYMENT_EXPIRE_MINUTES}m"}
        if payment.currency != "CNY":  # cross-border: the amount is in trans_currency
            extra["trans_currency"] = payment.currency
        return extra

    def trade_create(self, payment) -> TradeCreated:
        subject = _("GPU cloud credit top-up")
        answer = self._call(
            "api_alipay_trade_precreate",
            subject=subject,
            out_trade_no=payment.checkout_id,
            total_amount=yuan(payment.amount),
            notify_url=self.notify_url,
            **self._extra(payment),
        )
        if answer.get("code") != SUCCESS_CODE or not answer.get("qr_code"):
            raise self._refused(answer)
        return_url = settings.SITE_URL + reverse("billing:wallet_pay", args=[payment.pk])
        signed = self.client().api_alipay_trade_page_pay(
            subject=subject,
            out_trade_no=payment.checkout_id,
            total_amount=yuan(payment.amount),
            return_url=return_url,
            notify_url=self.notify_url,
            **self._extra(payment),
        )
        return TradeCreated(
            qr_payload=answer["qr_code"], pay_url=f"{settings.ALIPAY_GATEWAY}?{signed}"
        )

    def trade_query(self, payment) -> TradeState:
        answer = self._call("api_alipay_trade_query", out_trade_no=payment.checkout_id)
        if answer.get("code") != SUCCESS_CODE:
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return TradeState("pending")  # nobody scanned the code yet
            raise self._refused(answer)
        return TradeState(
            TRADE_STATUS.get(answer.get("trade_status", ""), "pending"),
            trade_id=answer.get("trade_no", ""),
            amount=_decimal(answer.get("total_amount")),
            currency=answer.get("trans_currency") or "CNY",
        )

    def trade_close(self, payment) -> None:
        answer = self._call("api_alipay_trade_close", out_trade_no=payment.checkout_id)
        if answer.get("code") != SUCCESS_CODE and answer.get("sub_code") != "ACQ.TRADE_NOT_EXIST":
            raise self._refused(answer)

    def refund(self, refund) -> RefundResult:
        payment = refund.payment
        out_request_no = reference_for(refund.idempotency_key)
        answer = self._call(
            "api_alipay_trade_refund",
            refund_amount=yuan(refund.amount),
            out_trade_no=payment.checkout_id,
            out_request_no=out_request_no,
            refund_reason=refund.reason[:256],
        )
        if answer.get("code") != SUCCESS_CODE:
            raise self._refused(answer)
        # fund_change "N" answers a repeated request for a refund already made: still done.
        return RefundResult(provider_id=out_request_no, status="succeeded")

    def notification(
        self, body: bytes, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> WalletNotice:
        data = {key: str(value) for key, value in form.items()}  # a QueryDict: last values
        signature = data.pop("sign", "")
        if not signature or data.get("sign_type", "RSA2") != "RSA2":
            raise WebhookSignatureInvalid(_("The Alipay notification is not signed with RSA2."))
        try:
            valid = self.client().verify(dict(data), signature)
        except Exception:  # the SDK raises bare errors for malformed input
            valid = False
        if not valid:
            raise WebhookSignatureInvalid(_("The Alipay notification's signature is not valid."))
        if data.get("app_id") != settings.ALIPAY_APP_ID:
            raise WebhookSignatureInvalid(_("The Alipay notification is for another app."))
        out_trade_no = data.get("out_trade_no", "")
        status = data.get("trade_status", "")
        notify_id = data.get("notify_id") or f"{out_trade_no}:{status}:{data.get('notify_time')}"
        data.pop("sign_type", None)
        return WalletNotice(
            event_id=notify_id[:255],
            type=f"alipay.{data.get('notify_type', 'trade_status_sync')}.{status}"[:100],
            out_trade_no=out_trade_no,
            status=TRADE_STATUS.get(status, "pending"),
            trade_id=data.get("trade_no", ""),
            amount=_decimal(data.get("total_amount")),
            currency=data.get("trans_currency") or data.get("currency") or "CNY",
            payload=data,
        )


def _decimal(value) -> Decimal | None:
    try:
        return Decimal(str(value)) if value not in (None, "") else None
    except InvalidOperation:
        return None
