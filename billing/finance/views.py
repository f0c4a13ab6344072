"""The finance area for staff: the invoice register with its totals and ageing, and period
exports (register, lines, journal as CSV or XLSX) run in the background with a progress bar.

Only staff users with the finance permission (``billing.view_invoice``; superusers have it)
get in; anyone else signed in gets 403, anyone signed out the login page."""

from collections.abc import Callable
from functools import wraps
from itertools import islice

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from billing.finance import exports
from billing.finance import services as finance
from billing.models import ExportFormat, ExportJob, ExportKind, ExportStatus, InvoiceStatus
from portal.errors import InvalidInput

FINANCE_PERMISSION = "billing.view_invoice"
PAGE_STATUS_INVALID = 422
REGISTER_PAGE_SIZE = 50


def finance_required(view: Callable) -> Callable:
    """Signed in, staff, and holding the finance permission (else 403)."""

    @wraps(view)
    @login_required
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not (request.user.is_staff and request.user.has_perm(FINANCE_PERMISSION)):
            raise PermissionDenied(_("The finance area is for finance staff."))
        return view(request, *args, **kwargs)

    return wrapper


def _index_context(params: dict) -> dict:
    flt = finance.register_filter_build(params=params)
    rows = list(islice(exports.register_rows(flt), REGISTER_PAGE_SIZE))
    return {
        "flt": flt,
        "totals": exports.register_totals(flt),
        "ageing": exports.ageing(flt, timezone.now().date()),
        "buckets": exports.AGEING_BUCKETS,
        "page": Paginator(rows, REGISTER_PAGE_SIZE).get_page(1),
        "count": finance.register_count(flt),
    }


def _render_index(
    request: HttpRequest, params: dict, *, export_error: InvalidInput | None = None
) -> HttpResponse:
    context = {
        "params": params,
        "statuses": InvoiceStatus.choices,
        "kinds": ExportKind.choices,
        "formats": ExportFormat.choices,
        "export_error": export_error,
    }
    status = PAGE_STATUS_INVALID if export_error else 200
    try:
        context.update(_index_context(params))
    except InvalidInput as exc:
        context["error"] = exc
        status = PAGE_STATUS_INVALID
    return render(request, "billing/finance/index.html", context, status=status)


@require_GET
@finance_required
def finance_index(request: HttpRequest) -> HttpResponse:
    return _render_index(request, finance.filter_params(request.GET))


@require_POST
@finance_required
def export_create(request: HttpRequest) -> HttpResponse:
    params = finance.filter_params(request.POST)
    try:
        job = finance.export_job_create(
            user=request.user,
            kind=request.POST.get("kind", ""),
            format=request.POST.get("format", ""),
            params=params,
        )
    except InvalidInput as exc:
        return _render_index(request, params, export_error=exc)
    return redirect("billing:finance_export", pk=job.pk)


def _job_for(request: HttpRequest, pk: int) -> ExportJob:
    """The user's own job (any job for a superuser); someone else's is a 404."""
    jobs = ExportJob.objects.defer("content")
    if not request.user.is_superuser:
        jobs = jobs.filter(created_by=request.user)
    return get_object_or_404(jobs, pk=pk)


@require_GET
@finance_required
def export_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for(request, pk)
    context = {
        "job": job,
        "waiting": job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING),
        "filename": finance.export_filename(job),
    }
    template = "billing/finance/export.html"
    if request.htmx:
        template += "#export-progress"
    return render(request, template, context)


@require_GET
@finance_required
def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for(request, pk)
    if job.status != ExportStatus.DONE:
        return redirect("billing:finance_export", pk=job.pk)
    content = ExportJob.objects.values_list("content", flat=True).get(pk=job.pk)
    response = HttpResponse(bytes(content), content_type=finance.CONTENT_TYPES[job.format])
    response["Content-Disposition"] = f'attachment; filename="{job.filename}"'
    return response
