"""Local Alipay and WeChat Pay gateways for the wallet tests, served from threads of the test
process (``http.server``), with RSA keys generated per test run.

They implement the documented endpoints the SDKs call, check the merchant's signature on each
request and sign each answer the way the real gateways do, so ``python-alipay-sdk`` and
``wechatpayv3`` run unchanged against them:

- Alipay: ``GET /gateway.do`` (the SDK's signed query string) for ``alipay.trade.precreate``,
  ``alipay.trade.query``, ``alipay.trade.refund`` and ``alipay.trade.close``; answers
  ``{"<method>_response": {...}, "sign": "..."}`` signed with RSA2 over the inner JSON text.
- WeChat Pay: ``POST /v3/pay/transactions/native``, ``GET /v3/pay/transactions/out-trade-no/{id}``,
  ``POST .../out-trade-no/{id}/close`` and ``POST /v3/refund/domestic/refunds``; requests must
  carry a valid ``WECHATPAY2-SHA256-RSA2048`` Authorization, answers carry the Wechatpay-*
  signature headers.

``pay(out_trade_no)`` is the customer paying: it marks the order paid and returns the signed
notification (its exact body and headers), which a test delivers to the portal itself (the
Django test client) or ``deliver()`` posts to the order's notify URL (a live server).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign_sha256(key: rsa.RSAPrivateKey, message: str) -> str:
    return base64.b64encode(
        key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    ).decode()


def verify_sha256(public_key, message: str, signature: str) -> bool:
    try:
        public_key.verify(
            base64.b64decode(signature), message.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class Notification:
    """A notification as the wallet sends it: exact body bytes, headers, content type."""

    url: str
    body: bytes
    headers: dict[str, str]
    content_type: str
    form: dict[str, str] = field(default_factory=dict)

    def post(self, client):
        """Deliver through Django's test client (the exact body, the wallet's headers)."""
        return client.post(
            urlsplit(self.url).path,
            data=self.body,
            content_type=self.content_type,
            headers=self.headers,
        )


def deliver(notification: Notification) -> tuple[int, bytes]:
    """POST to the notify URL over HTTP (a live server)."""
    request = urllib.request.Request(  # a local test URL
        notification.url,
        data=notification.body,
        headers={"Content-Type": notification.content_type, **notification.headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Server:
    """A threaded HTTP server on a free local port; ``handle(method, path, headers, body)``
    returns (status, headers, body bytes)."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = owner.handle(
                    self.command, self.path, dict(self.headers.items()), body
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, method, path, headers, body):  # pragma: no cover - overridden
        raise NotImplementedError


# --- Alipay ------------------------------------------------------------------------------


class AlipayGateway(_Server):
    APP_ID = "2021000000000001"

    def __init__(self) -> None:
        super().__init__()
        self.app_key = rsa_key()  # the merchant's app key: the portal signs with it
        self.alipay_key = rsa_key()  # Alipay's key: answers and notifications
        self.orders: dict[str, dict] = {}
        self.refunds: list[dict] = []

    def reset(self) -> None:
        with self.lock:
            self.orders.clear()
            self.refunds.clear()
            self.requests.clear()

    @property
    def gateway(self) -> str:
        return self.url + "/gateway.do"

    @staticmethod
    def _unsigned(params: dict, *, without=("sign", "sign_type")) -> str:
        """What is signed: requests leave out ``sign``, notifications ``sign`` and
        ``sign_type``; the rest sorted, ``k=v`` joined by ``&``, values not encoded."""
        return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in without)

    def _answer(self, method: str, answer: dict):
        inner = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
        response_type = method.replace(".", "_") + "_response"
        signature = sign_sha256(self.alipay_key, inner)
        raw = f'{{"{response_type}":{inner},"sign":"{signature}"}}'
        return 200, {"Content-Type": "text/html;charset=utf-8"}, raw.encode()

    def handle(self, method, path, headers, body):
        url = urlsplit(path)
        if url.path != "/gateway.do":
            return 404, {}, b"not found"
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if body:
            params.update(parse_qsl(body.decode(), keep_blank_values=True))
        api = params.get("method", "")
        with self.lock:
            self.requests.append((api, url.query))
        if params.get("app_id") != self.APP_ID or not verify_sha256(
            self.app_key.public_key(),
            self._unsigned(params, without=("sign",)),
            params.get("sign", ""),
        ):
            return self._answer(
                api,
                {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"},
            )
        biz = json.loads(params.get("biz_content") or "{}")
        handler = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.refund": self._refund,
            "alipay.trade.close": self._close,
        }.get(api)
        if handler is None:
            return self._answer(api, {"code": "40004", "msg": "Business Failed"})
        with self.lock:
            return self._answer(api, handler(biz, params))

    def _precreate(self, biz, params):
        order = self.orders.setdefault(
            biz["out_trade_no"],
            {
                "out_trade_no": biz["out_trade_no"],
                "total_amount": biz["total_amount"],
                "subject": biz.get("subject", ""),
                "trans_currency": biz.get("trans_currency", ""),
                "notify_url": params.get("notify_url", ""),
                "status": "CREATED",  # no trade until a buyer scans the code
                "trade_no": "2026" + uuid.uuid4().hex[:24],
            },
        )
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": order["out_trade_no"],
            "qr_code": f"https://qr.alipay.com/bax{order['trade_no'][-20:]}",
        }

    def _query(self, biz, params):
        order = self.orders.get(biz.get("out_trade_no", ""))
        if order is None or order["status"] == "CREATED":
            return {
                "code": "40004",
                "msg": "Business Failed",
                "sub_code": "ACQ.TRADE_NOT_EXIST",
                "sub_msg": "交易不存在",
            }
        answer = {
            "code": "10000",
            "msg": "Success",
            "trade_no": order["trade_no"],
            "out_trade_no": order["out_trade_no"],
            "trade_status": order["status"],
            "total_amount": order.get("paid_amount", order["total_amount"]),
        }
        if order["trans_currency"]:
            answer["trans_currency"] = order["trans_currency"]
        return answer

    def _refund(self, biz, params):
        order = self.orders.get(biz.get("out_trade_no", ""))
        if order is None or order["status"] not in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR"}
        known = next(
            (r for r in self.refunds if r["out_request_no"] == biz["out_request_no"]), None
        )
        if known is None:
            known = {**biz, "out_trade_no": order["out_trade_no"]}
            self.refunds.append(known)
        refunded = sum(
            Decimal(r["refund_amount"])
            for r in self.refunds
            if r["out_trade_no"] == order["out_trade_no"]
        )
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": order["trade_no"],
            "out_trade_no": order["out_trade_no"],
            "fund_change": "Y",
            "refund_fee": str(refunded),
        }

    def _close(self, biz, params):
        order = self.orders.get(biz.get("out_trade_no", ""))
        if order is None or order["status"] == "CREATED":
            if order is not None:
                order["status"] = "TRADE_CLOSED"
            return {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST"}
        order["status"] = "TRADE_CLOSED"
        return {"code": "10000", "msg": "Success", "out_trade_no": order["out_trade_no"]}

    def pay(
        self,
        out_trade_no: str,
        *,
        amount: str | None = None,
        currency: str | None = None,
        sign_key: rsa.RSAPrivateKey | None = None,
        app_id: str | None = None,
        notify_url: str | None = None,
    ) -> Notification:
        """The buyer pays the order: it is TRADE_SUCCESS from now on; returns the signed
        notification (``amount``/``currency`` override what it reports, ``sign_key`` forges)."""
        with self.lock:
            order = self.orders[out_trade_no]
            order["status"] = "TRADE_SUCCESS"
            if amount is not None:
                order["paid_amount"] = amount
        now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        form = {
            "notify_time": now,
            "notify_type": "trade_status_sync",
            "notify_id": uuid.uuid4().hex,
            "app_id": app_id or self.APP_ID,
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "trade_no": order["trade_no"],
            "out_trade_no": out_trade_no,
            "trade_status": "TRADE_SUCCESS",
            "total_amount": amount or order["total_amount"],
            "receipt_amount": amount or order["total_amount"],
            "buyer_id": "2088102177846880",
            "seller_id": "2088102177846881",
            "subject": order["subject"],
            "gmt_create": now,
            "gmt_payment": now,
        }
        if currency or order["trans_currency"]:
            form["trans_currency"] = currency or order["trans_currency"]
        form["sign"] = sign_sha256(sign_key or self.alipay_key, self._unsigned(form))
        return Notification(
            url=notify_url or order["notify_url"],
            body=urlencode(form).encode(),
            headers={},
            content_type="application/x-www-form-urlencoded; charset=utf-8",
            form=form,
        )


# --- WeChat Pay --------------------------------------------------------------------------


class WeChatPayGateway(_Server):
    MCH_ID = "1900000109"
    APP_ID = "wxd678efh567hg6787"
    MERCHANT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD********".replace("*", "0")
    PUBLIC_KEY_ID = "PUB_KEY_ID_0119000001092026120400000000000001"

    def __init__(self) -> None:
        super().__init__()
        self.merchant_key = rsa_key()  # the merchant API key: the portal signs requests
        self.platform_key = rsa_key()  # WeChat Pay's platform key: answers and notifications
        self.apiv3_key = secrets.token_hex(16)  # 32 characters
        self.orders: dict[str, dict] = {}
        self.refunds: list[dict] = []
        self.rejected: list[str] = []

    def reset(self) -> None:
        with self.lock:
            self.orders.clear()
            self.refunds.clear()
            self.requests.clear()
            self.rejected.clear()

    def _signed(self, status: int, answer: dict | None):
        body = json.dumps(answer, ensure_ascii=False) if answer is not None else ""
        stamp, nonce = str(int(time.time())), uuid.uuid4().hex.upper()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": self.PUBLIC_KEY_ID,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": sign_sha256(self.platform_key, f"{stamp}\n{nonce}\n{body}\n"),
        }
        return status, headers, body.encode()

    def _authorized(self, method: str, path: str, headers: dict, body: bytes) -> bool:
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, rest = auth.partition(" ")
        if scheme != "WECHATPAY2-SHA256-RSA2048":
            return False
        fields = {}
        for part in rest.split(","):
            key, _, value = part.strip().partition("=")
            fields[key] = value.strip('"')
        if fields.get("mchid") != self.MCH_ID or fields.get("serial_no") != self.MERCHANT_SERIAL:
            return False
        if abs(time.time() - int(fields.get("timestamp") or 0)) > 300:
            return False
        message = (
            f"{method}\n{path}\n{fields.get('timestamp')}\n{fields.get('nonce_str')}\n"
            f"{body.decode()}\n"
        )
        return verify_sha256(self.merchant_key.public_key(), message, fields.get("signature", ""))

    def handle(self, method, path, headers, body):
        with self.lock:
            self.requests.append((method, path))
        if not self._authorized(method, path, headers, body):
            self.rejected.append(path)
            return self._signed(401, {"code": "SIGN_ERROR", "message": "签名错误"})
        url = urlsplit(path)
        data = json.loads(body) if body else {}
        with self.lock:
            if method == "POST" and url.path == "/v3/pay/transactions/native":
                return self._native(data)
            prefix = "/v3/pay/transactions/out-trade-no/"
            if url.path.startswith(prefix):
                rest = url.path[len(prefix) :]
                if method == "POST" and rest.endswith("/close"):
                    return self._close(rest.removesuffix("/close"))
                if method == "GET":
                    return self._query(rest)
            if method == "POST" and url.path == "/v3/refund/domestic/refunds":
                return self._refund(data)
        return self._signed(404, {"code": "NOT_FOUND", "message": "no such endpoint"})

    def _native(self, data):
        if data.get("mchid") != self.MCH_ID or data.get("appid") != self.APP_ID:
            return self._signed(400, {"code": "PARAM_ERROR", "message": "mchid/appid"})
        order = self.orders.setdefault(
            data["out_trade_no"],
            {
                "out_trade_no": data["out_trade_no"],
                "amount": data["amount"],
                "description": data.get("description", ""),
                "notify_url": data.get("notify_url", ""),
                "trade_state": "NOTPAY",
                "transaction_id": "4200" + uuid.uuid4().hex[:24],
            },
        )
        return self._signed(
            200, {"code_url": f"weixin://wxpay/bizpayurl?pr={order['transaction_id'][-12:]}"}
        )

    def _transaction(self, order) -> dict:
        paid = order.get("paid_amount", order["amount"])
        return {
            "appid": self.APP_ID,
            "mchid": self.MCH_ID,
            "out_trade_no": order["out_trade_no"],
            "transaction_id": order["transaction_id"],
            "trade_type": "NATIVE",
            "trade_state": order["trade_state"],
            "trade_state_desc": "支付成功" if order["trade_state"] == "SUCCESS" else "未支付",
            "bank_type": "OTHERS",
            "success_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {
                "total": paid["total"],
                "payer_total": paid["total"],
                "currency": paid.get("currency", "CNY"),
                "payer_currency": "CNY",
            },
        }

    def _query(self, out_trade_no):
        order = self.orders.get(out_trade_no)
        if order is None:
            return self._signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        return self._signed(200, self._transaction(order))

    def _close(self, out_trade_no):
        order = self.orders.get(out_trade_no)
        if order is None:
            return self._signed(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        if order["trade_state"] == "NOTPAY":
            order["trade_state"] = "CLOSED"
        return self._signed(204, None)

    def _refund(self, data):
        order = self.orders.get(data.get("out_trade_no", ""))
        if order is None or order["trade_state"] not in ("SUCCESS", "REFUND"):
            return self._signed(400, {"code": "INVALID_REQUEST", "message": "订单状态错误"})
        known = next((r for r in self.refunds if r["out_refund_no"] == data["out_refund_no"]), None)
        if known is None:
            known = {**data, "refund_id": "5030" + uuid.uuid4().hex[:24]}
            self.refunds.append(known)
            order["trade_state"] = "REFUND"
        return self._signed(
            200,
            {
                "refund_id": known["refund_id"],
                "out_refund_no": known["out_refund_no"],
                "transaction_id": order["transaction_id"],
                "out_trade_no": order["out_trade_no"],
                "channel": "ORIGINAL",
                "status": "SUCCESS",
                "amount": {**known["amount"], "payer_refund": known["amount"]["refund"]},
            },
        )

    def notification_for(
        self,
        resource: dict,
        *,
        event_type: str = "TRANSACTION.SUCCESS",
        url: str,
        sign_key: rsa.RSAPrivateKey | None = None,
        apiv3_key: str | None = None,
        serial: str | None = None,
        timestamp: int | None = None,
    ) -> Notification:
        nonce = secrets.token_hex(6)  # 12 characters, as WeChat Pay's
        associated = "transaction" if event_type.startswith("TRANSACTION") else "refund"
        ciphertext = AESGCM((apiv3_key or self.apiv3_key).encode()).encrypt(
            nonce.encode(), json.dumps(resource, ensure_ascii=False).encode(), associated.encode()
        )
        envelope = {
            "id": str(uuid.uuid4()),
            "create_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": {
                "original_type": associated,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "associated_data": associated,
                "nonce": nonce,
            },
        }
        body = json.dumps(envelope, ensure_ascii=False)
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        header_nonce = uuid.uuid4().hex.upper()
        headers = {
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": header_nonce,
            "Wechatpay-Serial": serial or self.PUBLIC_KEY_ID,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
            "Wechatpay-Signature": sign_sha256(
                sign_key or self.platform_key, f"{stamp}\n{header_nonce}\n{body}\n"
            ),
        }
        return Notification(
            url=url, body=body.encode(), headers=headers, content_type="application/json"
        )

    def pay(
        self,
        out_trade_no: str,
        *,
        total: int | None = None,
        currency: str | None = None,
        notify_url: str | None = None,
        **signing,
    ) -> Notification:
        """The buyer pays: the order is SUCCESS from now on; returns the signed notification
        (``total``/``currency`` override what it reports; ``signing`` forges it)."""
        with self.lock:
            order = self.orders[out_trade_no]
            order["trade_state"] = "SUCCESS"
            if total is not None or currency is not None:
                order["paid_amount"] = {
                    "total": order["amount"]["total"] if total is None else total,
                    "currency": currency or order["amount"].get("currency", "CNY"),
                }
            resource = self._transaction(order)
        return self.notification_for(resource, url=notify_url or order["notify_url"], **signing)


@dataclass
class Gateways:
    alipay: AlipayGateway
    wechatpay: WeChatPayGateway

    def settings(self, settings, *, site_url: str = "http://testserver") -> None:
        """Point the portal at these gateways, with their keys (``settings``: pytest-django's)."""
        settings.SITE_URL = site_url
        settings.ALIPAY_APP_ID = self.alipay.APP_ID
        settings.ALIPAY_PRIVATE_KEY = private_pem(self.alipay.app_key)
        settings.ALIPAY_PUBLIC_KEY = public_pem(self.alipay.alipay_key)
        settings.ALIPAY_GATEWAY = self.alipay.gateway
        settings.ALIPAY_CURRENCIES = ["CNY"]
        settings.ALIPAY_NOTIFY_URL_BASE = site_url
        settings.WECHATPAY_MCH_ID = self.wechatpay.MCH_ID
        settings.WECHATPAY_APP_ID = self.wechatpay.APP_ID
        settings.WECHATPAY_PRIVATE_KEY = private_pem(self.wechatpay.merchant_key)
        settings.WECHATPAY_CERT_SERIAL_NO = self.wechatpay.MERCHANT_SERIAL
        settings.WECHATPAY_APIV3_KEY = self.wechatpay.apiv3_key
        settings.WECHATPAY_PUBLIC_KEY = public_pem(self.wechatpay.platform_key)
        settings.WECHATPAY_PUBLIC_KEY_ID = self.wechatpay.PUBLIC_KEY_ID
        settings.WECHATPAY_GATEWAY = self.wechatpay.url
        settings.WECHATPAY_CURRENCIES = ["CNY"]
        settings.WECHATPAY_NOTIFY_URL_BASE = site_url

    def secrets(self) -> list[str]:
        """Key material that must never leave the portal (checked in responses)."""

        def body(pem: str) -> str:
            return "".join(line for line in pem.splitlines() if "-----" not in line)[40:120]

        return [
            body(private_pem(self.alipay.app_key)),
            body(private_pem(self.wechatpay.merchant_key)),
            self.wechatpay.apiv3_key,
        ]

    def reset(self) -> None:
        self.alipay.reset()
        self.wechatpay.reset()

    def stop(self) -> None:
        self.alipay.stop()
        self.wechatpay.stop()


def gateways_start() -> Gateways:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    return Gateways(AlipayGateway(), WeChatPayGateway())
