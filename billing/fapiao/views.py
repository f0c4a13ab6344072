"""The customer's fapiao pages: what can still be requested with the request form, the
requests with their status, one request's lines, and the download of the issued file.
Another organisation's request answers 404."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from billing.fapiao import selectors
from billing.fapiao import services as fapiao
from billing.fapiao.files import file_open
from billing.fapiao.forms import FapiaoRequestForm
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.errors import SHOWN_ON_PAGE, NotFound
from portal.money import format_amount, with_currency

PAGE_STATUS_INVALID = 422


def _choice_label(item: selectors.Invoiceable) -> str:
    invoice = item.invoice
    return _("%(number)s, %(month)s: %(amount)s") % {
        "number": invoice.number,
        "month": date_format(invoice.period_start, "YEAR_MONTH_FORMAT"),
        "amount": with_currency(format_amount(item.amount, invoice.currency), invoice.currency),
    }


def file_response(request_obj) -> HttpResponse:
    """The issued fapiao as an attachment, with the type its bytes were checked to be."""
    if not request_obj.file_path:
        raise Http404(_("No fapiao file is recorded yet."))
    try:
        handle = file_open(request_obj.file_path)
    except FileNotFoundError:
        raise Http404(_("The fapiao file is no longer stored.")) from None
    return FileResponse(
        handle,
        as_attachment=True,
        filename=request_obj.file_name,
        content_type=request_obj.file_content_type,
    )


@org_page(Action.BILLING_VIEW)
def fapiao_page(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    can_manage = request.actor.can(Action.BILLING_MANAGE)
    invoiceable = selectors.invoiceable(organization)
    verified_code = fapiao.verified_credit_code(organization)
    form = FapiaoRequestForm(
        request.POST or None,
        invoice_choices=[(str(item.invoice.pk), _choice_label(item)) for item in invoiceable],
        initial={"buyer_title": organization.name, "buyer_tax_id": verified_code},
    )
    status = 200
    if request.method == "POST":
        if not can_manage:
            raise DjangoPermissionDenied(_("Only owners and billing members request fapiao."))
        status = PAGE_STATUS_INVALID
        if form.is_valid():
            data = form.cleaned_data
            try:
                created = fapiao.request_create(
                    actor=request.actor,
                    kind=data["kind"],
                    invoice_ids=[int(pk) for pk in data["invoices"]],
                    email=data["email"],
                    buyer=fapiao.Buyer(
                        title=data["buyer_title"],
                        tax_id=data["buyer_tax_id"],
                        address=data["buyer_address"],
                        phone=data["buyer_phone"],
                        bank=data["buyer_bank"],
                        account=data["buyer_account"],
                    ),
                )
            except SHOWN_ON_PAGE as exc:
                for name, message in (exc.details or {}).items():
                    if name in form.fields:
                        form.add_error(name, message)
                if not form.errors:
                    form.add_error(None, exc.message)
            else:
                messages.success(
                    request,
                    _("Your fapiao request is sent. We will email you when it is issued."),
                )
                return redirect("billing:fapiao_request", created.pk)
    context = {
        "form": form,
        "can_manage": can_manage,
        "invoiceable": invoiceable,
        "requests": selectors.requests_of(organization)[:50],
        "minimum": fapiao.min_amount(),
        "is_enterprise": bool(verified_code),
        "cny": organization.currency == selectors.FAPIAO_CURRENCY,
    }
    return render(request, "billing/fapiao/fapiao.html", context, status=status)


@org_page(Action.BILLING_VIEW)
def fapiao_request(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        found = selectors.request_for(request.organization, pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    return render(request, "billing/fapiao/request.html", {"fr": found})


@org_page(Action.BILLING_VIEW)
def fapiao_file(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        found = selectors.request_for(request.organization, pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    return file_response(found)
