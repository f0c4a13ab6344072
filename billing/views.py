"""Billing pages: balance and burn, top-ups, saved cards, auto-recharge, the spend limit, the
ledger and invoices; the provider webhook endpoint; and the fake provider's checkout page."""

from datetime import timedelta

from django.contrib import messages
from django.core import signing
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.forms import (
    AutoRechargeForm,
    CreditRequestForm,
    FakeCardForm,
    SpendLimitForm,
    TopUpForm,
)
from billing.invoicing import selectors as invoice_selectors
from billing.ledger import selectors as ledger_selectors
from billing.ledger import services
from billing.models import Payment, PaymentStatus
from billing.payments import provider as payment_provider
from billing.payments import selectors as payment_selectors
from billing.payments import services as payments
from billing.payments import wallets
from billing.payments.base import PaymentProviderError, WebhookSignatureInvalid
from billing.payments.events import webhook_receive
from billing.payments.fake import FakeProvider, card_check, payment_method_id
from billing.spend import credit_terms
from billing.spend import services as spend
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.errors import SHOWN_ON_PAGE, NotFound

PAGE_STATUS_INVALID = 422


def _context(request: HttpRequest, **forms) -> dict:
    organization = request.organization
    profile = payments.profile_for(organization)
    state = spend.spend_state(organization)
    page = ledger_selectors.ledger_page(organization, request.GET.get("page"))
    return {
        "account": services.account_for(organization),
        "state": state,
        "profile": profile,
        "cards": payment_selectors.payment_methods(organization),
        "payments": payment_selectors.payments(organization)[:10],
        "invoices": invoice_selectors.invoices(organization)[:24],
        "page": page,
        "top_up_form": forms.get("top_up_form") or TopUpForm(),
        "pay_methods": wallets.pay_methods(organization.currency),
        "wallet_payments_open": wallets.wallet_payments_open(organization),
        "auto_recharge_form": forms.get("auto_recharge_form")
        or AutoRechargeForm(
            initial={
                "enabled": profile.auto_recharge_enabled,
                "threshold": profile.auto_recharge_threshold,
                "amount": profile.auto_recharge_amount,
            }
        ),
        "spend_limit_form": forms.get("spend_limit_form")
        or SpendLimitForm(
            initial={"limit": profile.monthly_spend_limit, "mode": profile.spend_limit_mode}
        ),
        "can_manage": request.actor.can(Action.BILLING_MANAGE),
        "credit_request": credit_terms.credit_request_pending(organization),
        "exposure": credit_terms.exposure(organization, profile=profile)
        if organization.billing_mode == "invoiced"
        else None,
    }


@org_page(Action.BILLING_VIEW)
def billing(request: HttpRequest) -> HttpResponse:
    return render(request, "billing/billing.html", _context(request))


def _require_manage(request: HttpRequest) -> None:
    if not request.actor.can(Action.BILLING_MANAGE):
        raise DjangoPermissionDenied(_("Only owners and billing members change billing settings."))


def _errors_onto(form, exc) -> None:
    """A service's refusal on the form: per field where it names one, else for the form."""
    for field, message in (exc.details or {}).items():
        if field in form.fields:
            form.add_error(field, message)
    if not form.errors:
        form.add_error(None, exc.message)


def _invalid(request: HttpRequest, form_name: str, form, exc) -> HttpResponse:
    _errors_onto(form, exc)
    return render(
        request, "billing/billing.html", _context(request, **{form_name: form}), status=422
    )


@org_page(Action.BILLING_VIEW)
@require_POST
def top_up(request: HttpRequest) -> HttpResponse:
    _require_manage(request)
    form = TopUpForm(request.POST)
    if not form.is_valid():
        return render(
            request, "billing/billing.html", _context(request, top_up_form=form), status=422
        )
    if request.POST.get("method", "card") != "card":  # Alipay, WeChat Pay
        from billing.wallet_views import top_up_wallet

        return top_up_wallet(request, form, lambda exc: _invalid(request, "top_up_form", form, exc))
    back = request.build_absolute_uri(reverse("billing:billing"))
    try:
        target = payments.top_up_start(
            actor=request.actor,
            amount=form.cleaned_data["amount"],
            success_url=request.build_absolute_uri(reverse("billing:payments")) + "?returned=1",
            cancel_url=back,
        )
    except (*SHOWN_ON_PAGE, PaymentProviderError) as exc:
        return _invalid(request, "top_up_form", form, exc)
    return redirect(target.url)


@org_page(Action.BILLING_VIEW)
def payments_page(request: HttpRequest) -> HttpResponse:
    """Recent payments, refreshed while one is still pending (the webhook may lag the return)."""
    context = {
        "payments": payment_selectors.payments(request.organization)[:50],
        "returned": request.GET.get("returned") == "1",
    }
    # Only the newest checkout counts: an abandoned earlier one must not keep the page waiting.
    recent = timezone.now() - timedelta(minutes=30)
    latest = next((p for p in context["payments"][:5] if p.checkout_id), None)
    context["waiting"] = (
        context["returned"]
        and latest is not None
        and latest.status == PaymentStatus.PENDING
        and latest.created_at > recent
    )
    name = "billing/payments.html#payment-list" if request.htmx else "billing/payments.html"
    return render(request, name, context)


@org_page(Action.BILLING_VIEW)
@require_POST
def card_add(request: HttpRequest) -> HttpResponse:
    _require_manage(request)
    back = request.build_absolute_uri(reverse("billing:billing"))
    try:
        target = payments.card_save_start(actor=request.actor, success_url=back, cancel_url=back)
    except (*SHOWN_ON_PAGE, PaymentProviderError) as exc:
        messages.error(request, exc.message)
        return redirect("billing:billing")
    return redirect(target.url)


@org_page(Action.BILLING_VIEW)
@require_POST
def card_default(request: HttpRequest, pk: int) -> HttpResponse:
    _require_manage(request)
    try:
        method = payments.card_make_default(actor=request.actor, method_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("%(method)s is now the default card.") % {"method": method})
    return redirect("billing:billing")


@org_page(Action.BILLING_VIEW)
@require_POST
def card_remove(request: HttpRequest, pk: int) -> HttpResponse:
    _require_manage(request)
    try:
        method = payments.card_remove(actor=request.actor, method_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("%(method)s removed.") % {"method": method})
    return redirect("billing:billing")


@org_page(Action.BILLING_VIEW)
@require_POST
def auto_recharge(request: HttpRequest) -> HttpResponse:
    _require_manage(request)
    form = AutoRechargeForm(request.POST)
    form.is_valid()
    data = form.cleaned_data
    try:
        payments.auto_recharge_configure(
            actor=request.actor,
            enabled=data.get("enabled", False),
            threshold=data.get("threshold"),
            amount=data.get("amount"),
        )
    except SHOWN_ON_PAGE as exc:
        return _invalid(request, "auto_recharge_form", form, exc)
    messages.success(
        request, _("Auto-recharge is on.") if data.get("enabled") else _("Auto-recharge is off.")
    )
    return redirect("billing:billing")


@org_page(Action.BILLING_VIEW)
@require_POST
def spend_limit(request: HttpRequest) -> HttpResponse:
    _require_manage(request)
    form = SpendLimitForm(request.POST)
    form.is_valid()
    try:
        profile = spend.spend_limit_set(
            actor=request.actor,
            limit=form.cleaned_data.get("limit"),
            mode=request.POST.get("mode") or None,
        )
    except SHOWN_ON_PAGE as exc:
        return _invalid(request, "spend_limit_form", form, exc)
    if profile.monthly_spend_limit is None:
        messages.success(request, _("No monthly spend limit."))
    else:
        messages.success(
            request,
            _(
                "Monthly spend limit set to %(monthly_spend_limit)s %(currency)s "
                "(%(spend_limit_mode)s)."
            )
            % {
                "monthly_spend_limit": profile.monthly_spend_limit,
                "currency": request.organization.currency,
                "spend_limit_mode": profile.get_spend_limit_mode_display().lower(),
            },
        )
    return redirect("billing:billing")


@org_page(Action.BILLING_VIEW)
def credit_request(request: HttpRequest) -> HttpResponse:
    """Ask finance for monthly invoicing (owners and billing members)."""
    _require_manage(request)
    organization = request.organization
    form = CreditRequestForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = PAGE_STATUS_INVALID
        if form.is_valid():
            try:
                credit_terms.credit_request_create(actor=request.actor, **form.cleaned_data)
            except SHOWN_ON_PAGE as exc:
                _errors_onto(form, exc)
            else:
                messages.success(
                    request,
                    _("Your request for monthly invoicing is sent. Finance will answer by email."),
                )
                return redirect("billing:billing")
    return render(
        request,
        "billing/credit_request.html",
        {
            "form": form,
            "pending": credit_terms.credit_request_pending(organization),
            "invoiced": organization.billing_mode == "invoiced",
        },
        status=status,
    )


@org_page(Action.BILLING_VIEW)
@require_POST
def credit_request_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    _require_manage(request)
    try:
        credit_terms.credit_request_withdraw(actor=request.actor, request_id=pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    messages.success(request, _("Your request for monthly invoicing is withdrawn."))
    return redirect("billing:billing")


# --- Invoices ------------------------------------------------------------------------------


def _invoice(request: HttpRequest, pk: int):
    invoice = (
        invoice_selectors.invoices(request.organization, include_drafts=True).filter(pk=pk).first()
    )
    if invoice is None:
        raise Http404("No such invoice in this organisation.")
    return invoice


@org_page(Action.BILLING_VIEW)
def invoice_detail(request: HttpRequest, pk: int) -> HttpResponse:
    invoice = _invoice(request, pk)
    return render(
        request,
        "billing/invoice.html",
        {
            "invoice": invoice,
            "lines": invoice.lines.all(),
            "credit_notes": invoice.credit_notes.all(),
            "einvoice_profile": _profile_label(invoice),
        },
    )


def _profile_label(invoice) -> str:
    """The CIUS the invoice's UBL and CII follow, as frozen with its buyer; "" for plain
    EN 16931."""
    from portal.accounts.models import EInvoiceProfile

    profile = (invoice.buyer or {}).get("einvoice_profile") or EInvoiceProfile.EN16931
    if profile == EInvoiceProfile.EN16931 or profile not in EInvoiceProfile.values:
        return ""
    return str(EInvoiceProfile(profile).label)


@org_page(Action.BILLING_VIEW)
def invoice_pdf(request: HttpRequest, pk: int) -> HttpResponse:
    from billing.invoicing.documents import invoice_pdf as render_pdf

    invoice = _invoice(request, pk)
    response = HttpResponse(render_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = (
        f'inline; filename="{invoice_selectors.invoice_filename(invoice)}"'
    )
    return response


EINVOICE_FLAVORS = {
    # flavor: (builder name in billing.finance.einvoice, content type, file suffix)
    "ubl": ("invoice_ubl", "application/xml", "ubl.xml"),
    "cii": ("invoice_cii", "application/xml", "cii.xml"),
    "factur-x": ("invoice_facturx_pdf", "application/pdf", "facturx.pdf"),
}


@org_page(Action.BILLING_VIEW)
def invoice_einvoice(request: HttpRequest, pk: int, flavor: str) -> HttpResponse:
    """The EN 16931 e-invoice of a finalized invoice or credit note: UBL 2.1, CII, Factur-X."""
    from billing.finance import einvoice

    if flavor not in EINVOICE_FLAVORS:
        raise Http404("Use ubl, cii or factur-x.")
    invoice = _invoice(request, pk)
    if invoice.status == "draft":
        raise Http404("A draft has no e-invoice yet.")
    builder, content_type, suffix = EINVOICE_FLAVORS[flavor]
    response = HttpResponse(getattr(einvoice, builder)(invoice), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}-{suffix}"'
    return response


# --- Provider webhooks ----------------------------------------------------------------------


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, provider_name: str) -> HttpResponse:
    """Verify, store once and queue: the work happens in a task, so this answers at once."""
    try:
        event, created = webhook_receive(provider_name, request.body, request.headers)
    except LookupError:
        raise Http404("No such payment provider.") from None
    except WebhookSignatureInvalid as exc:
        return JsonResponse(
            {"error": {"code": exc.code, "message": exc.message, "details": {}}}, status=400
        )
    return JsonResponse({"received": True, "duplicate": not created, "id": event.event_id})


# --- The fake provider's hosted page ---------------------------------------------------------


@org_page(Action.BILLING_VIEW)
def fake_checkout(request: HttpRequest, token: str) -> HttpResponse:
    """What Stripe Checkout would show: pay a top-up, or save a card. Test cards decide."""
    provider = payment_provider("fake")
    if not isinstance(provider, FakeProvider):
        raise Http404()
    try:
        session = FakeProvider.checkout_read(token)
    except signing.BadSignature:
        return render(request, "billing/fake_checkout.html", {"expired": True}, status=400)
    payment = None
    if session["mode"] == "payment":
        payment = Payment.objects.filter(
            pk=session["payment"], organization=request.organization, provider="fake"
        ).first()
        if payment is None:
            raise Http404("No such payment in this organisation.")
    elif session.get("org") != request.organization.pk:
        raise Http404("This page belongs to another organisation.")
    form = FakeCardForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        expiry = form.cleaned_data["expiry"].replace(" ", "")
        month, _slash, year = expiry.partition("/")
        check = card_check(form.cleaned_data["card_number"], month, year)
        if check.ok and payment is not None:
            if payment.status == PaymentStatus.SUCCEEDED:
                return redirect(session["ok"])
            provider.checkout_paid(session, payment)
            return redirect(session["ok"])
        if check.ok:
            provider.card_added(
                session,
                request.organization,
                payment_method_id(form.cleaned_data["card_number"], int(month), int(year)),
            )
            messages.success(request, _("Card saved."))
            return redirect(session["ok"])
        form.add_error("expiry" if check.field == "expiry" else "card_number", _(check.message))
    if request.method == "POST":
        status = 422
    return render(
        request,
        "billing/fake_checkout.html",
        {"form": form, "payment": payment, "session": session},
        status=status,
    )
