"""The finance area's bank transfers: the bank's received lines (entered by hand or imported
from a statement CSV) and the customers' notices; finance matches a line to an organisation
(suggested from the payment reference in its remark), returns it to the sender, or rejects a
notice. Staff with ``billing.match_bank_transfer`` only."""

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from billing.models import BankTransferNotice
from billing.transfers import services as transfers
from billing.transfers.forms import BankLineForm, StatementForm
from billing.transfers.views import slip_response
from portal.accounts.middleware import client_ip
from portal.accounts.models import Organization
from portal.errors import SHOWN_ON_PAGE, NotFound

PAGE_STATUS_INVALID = 422
STATEMENT_MAX_BYTES = 5 * 1024 * 1024


def matcher_required(view: Callable) -> Callable:
    """Signed in, staff, and holding ``billing.match_bank_transfer`` (else 403)."""

    @wraps(view)
    @login_required
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        user = request.user
        if not (user.is_staff and user.has_perm(transfers.MATCH_PERMISSION)):
            raise PermissionDenied(_("Bank transfers are matched by finance staff."))
        return view(request, *args, **kwargs)

    return wrapper


def _render(request: HttpRequest, *, status: int = 200, **extra) -> HttpResponse:
    pending = list(transfers.notices_pending())
    lines = list(transfers.lines_unmatched())
    for line in lines:
        line.suggested_notice = transfers.notice_suggested_for(line, pending)
    context = {
        "lines": lines,
        "notices": pending,
        "decided": transfers.lines_decided(),
        "line_form": extra.pop("line_form", None) or BankLineForm(),
        "statement_form": extra.pop("statement_form", None) or StatementForm(),
        "columns": transfers.STATEMENT_COLUMNS,
        **extra,
    }
    return render(request, "billing/finance/bank_transfers.html", context, status=status)


@require_GET
@matcher_required
def bank_transfers(request: HttpRequest) -> HttpResponse:
    return _render(request)


@require_POST
@matcher_required
def line_create(request: HttpRequest) -> HttpResponse:
    form = BankLineForm(request.POST)
    if not form.is_valid():
        return _render(request, status=PAGE_STATUS_INVALID, line_form=form)
    try:
        line = transfers.bank_line_create(
            user=request.user, ip=client_ip(request), **form.cleaned_data
        )
    except SHOWN_ON_PAGE as exc:
        for name, message in (exc.details or {}).items():
            form.add_error(name if name in form.fields else None, message)
        if not form.errors:
            form.add_error(None, exc.message)
        return _render(request, status=PAGE_STATUS_INVALID, line_form=form)
    messages.success(request, _("Recorded %(line)s.") % {"line": line})
    return redirect("billing:finance_bank_transfers")


@require_POST
@matcher_required
def statement_import(request: HttpRequest) -> HttpResponse:
    form = StatementForm(request.POST, request.FILES)
    if not form.is_valid():
        return _render(request, status=PAGE_STATUS_INVALID, statement_form=form)
    upload = form.cleaned_data["statement"]
    if upload.size > STATEMENT_MAX_BYTES:
        form.add_error("statement", _("A statement file is at most 5 MB."))
        return _render(request, status=PAGE_STATUS_INVALID, statement_form=form)
    try:
        report = transfers.statement_import(
            user=request.user, content=upload.read(), ip=client_ip(request)
        )
    except SHOWN_ON_PAGE as exc:
        return _render(
            request,
            status=PAGE_STATUS_INVALID,
            statement_form=form,
            import_error=exc,
            import_rows=(exc.details or {}).get("rows", []),
        )
    messages.success(
        request,
        ngettext("Imported %(count)s line.", "Imported %(count)s lines.", len(report.created))
        % {"count": len(report.created)}
        + (
            " "
            + ngettext(
                "%(count)s line was already recorded and skipped.",
                "%(count)s lines were already recorded and skipped.",
                len(report.skipped),
            )
            % {"count": len(report.skipped)}
            if report.skipped
            else ""
        ),
    )
    return redirect("billing:finance_bank_transfers")


@require_POST
@matcher_required
def line_match(request: HttpRequest, pk: int) -> HttpResponse:
    slug = (request.POST.get("organization") or "").strip()
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        messages.error(
            request, _("No organisation has the slug “%(slug)s”.") % {"slug": slug or "-"}
        )
        return redirect("billing:finance_bank_transfers")
    notice_id = request.POST.get("notice") or None
    try:
        line = transfers.bank_line_match(
            user=request.user,
            line_id=pk,
            organization=organization,
            notice_id=int(notice_id) if notice_id and notice_id.isdigit() else None,
            ip=client_ip(request),
        )
    except (*SHOWN_ON_PAGE, NotFound) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            _("%(amount)s %(currency)s credited to %(organization)s.")
            % {"amount": line.amount, "currency": line.currency, "organization": organization},
        )
    return redirect("billing:finance_bank_transfers")


@require_POST
@matcher_required
def line_return(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        transfers.bank_line_return(
            user=request.user,
            line_id=pk,
            reason=request.POST.get("reason", ""),
            ip=client_ip(request),
        )
    except (*SHOWN_ON_PAGE, NotFound) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("The transfer is marked as returned to the sender."))
    return redirect("billing:finance_bank_transfers")


@require_POST
@matcher_required
def notice_reject(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        transfers.notice_reject(
            user=request.user,
            notice_id=pk,
            reason=request.POST.get("reason", ""),
            ip=client_ip(request),
        )
    except (*SHOWN_ON_PAGE, NotFound) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("The notice is rejected; the customer sees the reason."))
    return redirect("billing:finance_bank_transfers")


@require_GET
@matcher_required
def notice_slip(request: HttpRequest, pk: int) -> HttpResponse:
    return slip_response(get_object_or_404(BankTransferNotice, pk=pk))
