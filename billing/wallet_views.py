"""Wallet top-ups in the browser: the top-up form's Alipay / WeChat Pay choice, the payment page
with its QR code (polled until the payment settles), and the wallets' notification endpoints."""

import logging

import segno
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.models import Payment, PaymentStatus
from billing.payments import wallets
from billing.payments.base import PaymentProviderError, WebhookSignatureInvalid
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.errors import SHOWN_ON_PAGE, NotFound

log = logging.getLogger(__name__)


def top_up_wallet(request: HttpRequest, form, invalid) -> HttpResponse:
    """The top-up form with Alipay or WeChat Pay chosen: create the payment, show its QR code.
    ``invalid(exc)`` renders the billing page with the refusal on the form."""
    try:
        payment = wallets.wallet_top_up_start(
            actor=request.actor,
            amount=form.cleaned_data["amount"],
            method=request.POST.get("method", ""),
        )
    except (*SHOWN_ON_PAGE, PaymentProviderError) as exc:
        return invalid(exc)
    return redirect("billing:wallet_pay", payment.pk)


def _payment(request: HttpRequest, pk: int) -> Payment:
    try:
        return wallets.wallet_payment_for(request.organization, pk)
    except NotFound as exc:
        raise Http404(exc.message) from None


def qr_svg(payload: str) -> str:
    """The QR code as inline SVG, drawn here (no outside service sees the payload)."""
    if not payload:
        return ""
    code = segno.make(payload, error="m")
    svg = code.svg_inline(scale=5, border=2, dark="#111", light="#fff", omitsize=False)
    # segno writes the markup itself: paths and attributes, the payload only as geometry
    return mark_safe(svg)  # noqa: S308  # nosec B308 B703


def _status_context(payment: Payment) -> dict:
    return {
        "payment": payment,
        "settled": wallets.payment_settled(payment),
        "succeeded": payment.status == PaymentStatus.SUCCEEDED,
    }


@org_page(Action.BILLING_VIEW)
def pay_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Scan to pay (or, for Alipay, pay on Alipay's page); the status below polls until done.
    Coming back here from Alipay's page credits nothing: only the wallet's word does."""
    payment = _payment(request, pk)
    context = _status_context(payment)
    context.update(
        {
            "qr": qr_svg(payment.qr_payload) if payment.status == PaymentStatus.PENDING else "",
            "wallet_label": wallets.wallet(payment.provider).label,
        }
    )
    return render(request, "billing/pay.html", context)


@org_page(Action.BILLING_VIEW)
def pay_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled status fragment; asks the wallet once the payment has waited a while."""
    payment = wallets.payment_refresh(_payment(request, pk))
    return render(request, "billing/includes/pay_status.html", _status_context(payment))


# --- Notifications ------------------------------------------------------------------------


@csrf_exempt
@require_POST
def alipay_notify(request: HttpRequest) -> HttpResponse:
    """Alipay's asynchronous notification: answer ``success`` once applied (or already seen);
    anything else makes Alipay deliver it again later."""
    try:
        outcome, _created = wallets.notification_receive(
            "alipay", request.body, request.headers, request.POST
        )
    except WebhookSignatureInvalid:
        return HttpResponse("fail", content_type="text/plain", status=400)
    except wallets.PaymentUnknown:
        return HttpResponse("fail", content_type="text/plain", status=404)
    log.info("alipay notification: %s", outcome)
    return HttpResponse("success", content_type="text/plain")


def _wechat_fail(message: str, status: int) -> JsonResponse:
    return JsonResponse({"code": "FAIL", "message": message}, status=status)


@csrf_exempt
@require_POST
def wechatpay_notify(request: HttpRequest) -> HttpResponse:
    """WeChat Pay's notification: 204 once applied (or already seen); 4xx/5xx with
    ``{"code": "FAIL", ...}`` otherwise, and WeChat Pay delivers it again."""
    try:
        outcome, _created = wallets.notification_receive(
            "wechatpay", request.body, request.headers, {}
        )
    except WebhookSignatureInvalid as exc:
        return _wechat_fail(exc.message, 401)
    except wallets.PaymentUnknown as exc:
        return _wechat_fail(exc.message, 404)
    log.info("wechatpay notification: %s", outcome)
    return HttpResponse(status=204)
