"""The customer's bank-transfer page: the payment reference with the centre's account, the
transfer notices sent with their status, and the private download of a notice's slip."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from billing.transfers import services as transfers
from billing.transfers import slips
from billing.transfers.forms import NoticeForm
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.errors import SHOWN_ON_PAGE, NotFound

PAGE_STATUS_INVALID = 422


def panel_context(organization) -> dict:
    """What the billing page's bank-transfer panel shows."""
    return {
        "payment_reference": transfers.reference_for(organization).code,
        "bank_account": transfers.bank_account(),
    }


def slip_response(notice) -> HttpResponse:
    """The slip as an attachment, with the type its bytes were checked to be."""
    try:
        handle = slips.slip_open(notice.slip_path)
    except FileNotFoundError:
        raise Http404(_("The slip is no longer stored.")) from None
    return FileResponse(
        handle,
        as_attachment=True,
        filename=notice.slip_name,
        content_type=notice.slip_content_type,
    )


@org_page(Action.BILLING_VIEW)
def bank_transfer(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    can_manage = request.actor.can(Action.BILLING_MANAGE)
    form = NoticeForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if not can_manage:
            raise DjangoPermissionDenied(_("Only owners and billing members tell of transfers."))
        status = PAGE_STATUS_INVALID
        if form.is_valid():
            try:
                transfers.notice_create(
                    actor=request.actor,
                    amount=form.cleaned_data["amount"],
                    sent_on=form.cleaned_data["sent_on"],
                    payer_name=form.cleaned_data["payer_name"],
                    slip=request.FILES.get("slip"),
                )
            except SHOWN_ON_PAGE as exc:
                for name, message in (exc.details or {}).items():
                    form.add_error(name if name in form.fields else None, message)
                if not form.errors:
                    form.add_error(None, exc.message)
            else:
                messages.success(
                    request,
                    _("Thank you: finance will match your transfer when it reaches our account."),
                )
                return redirect("billing:bank_transfer")
    context = {
        **panel_context(organization),
        "form": form,
        "can_manage": can_manage,
        "notices": transfers.notices(organization)[:50],
        "slip_max_mb": f"{settings.BANK_TRANSFER_SLIP_MAX_BYTES / (1024 * 1024):g}",
    }
    return render(request, "billing/transfers/bank_transfer.html", context, status=status)


@org_page(Action.BILLING_VIEW)
def notice_slip(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        notice = transfers.notice_for(request.organization, pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    return slip_response(notice)
