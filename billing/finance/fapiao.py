"""The finance area's fapiao queue: the open requests (export them as the tax platform's batch
spreadsheet, record each issued fapiao with its file, or reject one), and the red-letter
records a correction needs. Staff with ``billing.issue_fapiao`` only."""

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from billing.fapiao import services as fapiao
from billing.fapiao.views import file_response
from billing.models import FapiaoRequest
from portal.accounts.middleware import client_ip
from portal.errors import SHOWN_ON_PAGE

PAGE_STATUS_INVALID = 422
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def issuer_required(view: Callable) -> Callable:
    """Signed in, staff, and holding ``billing.issue_fapiao`` (else 403)."""

    @wraps(view)
    @login_required
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        user = request.user
        if not (user.is_staff and user.has_perm(fapiao.ISSUE_PERMISSION)):
            raise PermissionDenied(_("The fapiao queue is for finance staff."))
        return view(request, *args, **kwargs)

    return wrapper


def _render(
    request: HttpRequest,
    *,
    status: int = 200,
    errors: dict | None = None,
    posted: dict | None = None,
    **extra,
) -> HttpResponse:
    queue = list(fapiao.queue())
    for item in queue:  # a refusal is shown on the request's own forms, with what was typed
        item.error = (errors or {}).get(item.pk)
        item.posted = (posted or {}).get(item.pk, {})
    context = {
        "queue": queue,
        "decided": fapiao.recent_decided(),
        "red_posted": {},
        **extra,
    }
    return render(request, "billing/finance/fapiao.html", context, status=status)


@require_GET
@issuer_required
def fapiao_queue(request: HttpRequest) -> HttpResponse:
    return _render(request)


@require_POST
@issuer_required
def fapiao_export(request: HttpRequest) -> HttpResponse:
    ids = [int(pk) for pk in request.POST.getlist("requests") if pk.isdigit()]
    try:
        batch = fapiao.request_export(user=request.user, request_ids=ids, ip=client_ip(request))
    except SHOWN_ON_PAGE as exc:
        return _render(request, status=PAGE_STATUS_INVALID, export_error=exc)
    response = HttpResponse(batch.content, content_type=XLSX)
    response["Content-Disposition"] = f'attachment; filename="{batch.filename}"'
    return response


@require_POST
@issuer_required
def fapiao_issue(request: HttpRequest, pk: int) -> HttpResponse:
    data = request.POST
    try:
        issued = fapiao.request_record_issued(
            user=request.user,
            request_id=pk,
            number=data.get("number", ""),
            issued_on=data.get("issued_on", ""),
            net=data.get("net", ""),
            tax=data.get("tax", ""),
            total=data.get("total", ""),
            upload=request.FILES.get("file"),
            ip=client_ip(request),
        )
    except SHOWN_ON_PAGE as exc:
        return _render(
            request, status=PAGE_STATUS_INVALID, errors={pk: exc}, posted={pk: data.dict()}
        )
    messages.success(
        request, _("Fapiao %(number)s is recorded; the customer is told.") % {"number": issued}
    )
    return redirect("billing:finance_fapiao")


@require_POST
@issuer_required
def fapiao_reject(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        fapiao.request_reject(
            user=request.user,
            request_id=pk,
            reason=request.POST.get("reason", ""),
            ip=client_ip(request),
        )
    except SHOWN_ON_PAGE as exc:
        return _render(request, status=PAGE_STATUS_INVALID, errors={pk: exc})
    messages.success(request, _("The request is rejected."))
    return redirect("billing:finance_fapiao")


@require_POST
@issuer_required
def fapiao_red_letter(request: HttpRequest) -> HttpResponse:
    data = request.POST
    try:
        red = fapiao.red_letter_record(
            user=request.user,
            original_number=data.get("original", ""),
            invoice_number=data.get("invoice", ""),
            number=data.get("number", ""),
            issued_on=data.get("issued_on", ""),
            amount=data.get("amount", ""),
            net=data.get("net", ""),
            tax=data.get("tax", ""),
            reason=data.get("reason", ""),
            ip=client_ip(request),
        )
    except SHOWN_ON_PAGE as exc:
        return _render(request, status=PAGE_STATUS_INVALID, red_error=exc, red_posted=data.dict())
    messages.success(
        request,
        _("Red-letter fapiao %(number)s is recorded against %(original)s.")
        % {"number": red.number, "original": red.original.number},
    )
    return redirect("billing:finance_fapiao")


@require_GET
@issuer_required
def fapiao_file(request: HttpRequest, pk: int) -> HttpResponse:
    found = FapiaoRequest.objects.filter(pk=pk).first()
    if found is None:
        raise Http404(_("No such fapiao request."))
    return file_response(found)
