"""The finance area's services: the register filter read from a form, and period exports run
in the background (``ExportJob``), streamed through the writers of ``billing.finance.exports``.

``params`` of a job (and the finance page's query string) name the filter: ``start`` and
``end`` (``YYYY-MM``, inclusive), ``status`` (a list), ``currency``, ``organization`` (a slug),
``country`` and ``include_drafts``. The journal covers the UTC days of those months.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.finance import exports
from billing.finance.exports import (
    JOURNAL_COLUMNS,
    LINE_COLUMNS,
    REGISTER_COLUMNS,
    Column,
    RegisterFilter,
)
from billing.invoicing.services import month_start, next_month
from billing.models import (
    ExportFormat,
    ExportJob,
    ExportKind,
    ExportStatus,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LedgerEntry,
)
from portal.accounts.models import Organization, User
from portal.background import enqueue_on_commit
from portal.errors import InvalidInput

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 500
CONTENT_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ExportFormat.ZIP: "application/zip",
}
FILTER_KEYS = ("start", "end", "status", "currency", "organization", "country", "include_drafts")


# --- the filter -------------------------------------------------------------------------------


def default_month(today: date | None = None) -> str:
    """The last month that is over (``YYYY-MM``): what finance usually looks at."""
    today = today or timezone.now().date()
    return f"{month_start(today) - timedelta(days=1):%Y-%m}"


def _month(value: str, label: str) -> date:
    try:
        year, month = value.split("-")
        return date(int(year), int(month), 1)
    except (ValueError, TypeError):
        raise InvalidInput(
            _("The %(label)s month must look like 2026-10, not “%(value)s”.")
            % {"label": label, "value": value},
            code=BillingErrorCode.MONTH_INVALID,
            details={"field": label, "value": value},
        ) from None


def filter_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The filter's parameters from a query string or form (a ``QueryDict`` or a dict), with
    defaults: the last closed month, every status, drafts left out."""
    getlist = data.getlist if hasattr(data, "getlist") else None
    if getlist is not None:
        statuses = [s for s in getlist("status") if s]
    else:
        raw = data.get("status") or []
        statuses = [raw] if isinstance(raw, str) else list(raw)
    month = default_month()
    include = data.get("include_drafts")
    return {
        "start": (data.get("start") or month).strip(),
        "end": (data.get("end") or data.get("start") or month).strip(),
        "status": statuses,
        "currency": (data.get("currency") or "").strip().upper(),
        "organization": (data.get("organization") or "").strip(),
        "country": (data.get("country") or "").strip().upper(),
        "include_drafts": include in (True, "1", "on", "true", "yes"),
    }


def register_filter_build(*, params: Mapping[str, Any]) -> RegisterFilter:
    """A validated ``RegisterFilter`` from the parameters (``InvalidInput`` otherwise); missing
    ones take ``filter_params``' defaults."""
    params = filter_params(params)
    organization_id = None
    if params.get("organization"):
        organization_id = (
            Organization.objects.filter(slug=params["organization"])
            .values_list("pk", flat=True)
            .first()
        )
        if organization_id is None:
            raise InvalidInput(
                _("No organisation has the slug “%(organization)s”.")
                % {"organization": params["organization"]},
                code=BillingErrorCode.ORGANIZATION_UNKNOWN,
            )
    return RegisterFilter(
        start=_month(params.get("start", ""), "first"),
        end=_month(params.get("end", ""), "last"),
        statuses=tuple(params.get("status") or ()),
        currency=params.get("currency") or None,
        organization_id=organization_id,
        country=params.get("country") or None,
        include_drafts=bool(params.get("include_drafts")),
    )


def register_count(flt: RegisterFilter) -> int:
    """How many documents the register of ``flt`` has (one count query)."""
    return exports._invoices(flt).count()


def _journal_days(flt: RegisterFilter) -> tuple[date, date]:
    return month_start(flt.start), next_month(month_start(flt.end)) - timedelta(days=1)


# --- export jobs ------------------------------------------------------------------------------


def export_job_create(
    *, user: User, kind: str, format: str, params: Mapping[str, Any]
) -> ExportJob:
    """Queue an export of ``kind`` (register, lines, journal) in ``format`` (csv, xlsx) for the
    filter ``params``; ``billing.export_run`` runs it once the transaction commits."""
    if kind not in ExportKind.values:
        raise InvalidInput(
            _("Unknown export “%(kind)s”; choose %(values)s.")
            % {"kind": kind, "values": ", ".join(ExportKind.values)},
            code=BillingErrorCode.EXPORT_KIND_INVALID,
            details={"kind": kind},
        )
    if format not in ExportFormat.values:
        raise InvalidInput(
            _("Unknown format “%(format)s”; choose %(values)s.")
            % {"format": format, "values": ", ".join(ExportFormat.values)},
            code=BillingErrorCode.EXPORT_FORMAT_INVALID,
            details={"format": format},
        )
    if (kind == ExportKind.DOCUMENTS) != (format == ExportFormat.ZIP):
        raise InvalidInput(
            _("Invoice documents export as ZIP; the other exports as CSV or XLSX."),
            code=BillingErrorCode.EXPORT_FORMAT_INVALID,
            details={"kind": kind, "format": format},
        )
    params = filter_params(params)
    register_filter_build(params=params)  # validates before anything is queued
    from billing.finance.tasks import export_run

    with transaction.atomic(durable=True):
        job = ExportJob.objects.create(created_by=user, kind=kind, format=format, params=params)
        # with the broker down the job stays queued: export_jobs_sweep sends it again later
        enqueue_on_commit(export_run, job.pk)
    return job


# A queued job no worker took for this long is sent again; a running job older than the task's
# hard time limit (plus margin) lost its worker and is marked failed.
EXPORT_REQUEUE_AFTER = timedelta(minutes=2)
EXPORT_RUNNING_AT_MOST = timedelta(minutes=40)
# A finished export's file is kept this long for its download, then the job is deleted.
EXPORT_KEEP = timedelta(days=7)


def export_jobs_sweep(now=None) -> dict[str, int]:
    """Leave no export waiting forever: re-send queued jobs whose message was lost, fail
    running jobs whose worker died (their owner can start the export again), and delete
    finished jobs, with their file, after ``EXPORT_KEEP``."""
    now = now or timezone.now()
    queued = list(
        ExportJob.objects.filter(
            status=ExportStatus.QUEUED, created_at__lt=now - EXPORT_REQUEUE_AFTER
        ).values_list("pk", flat=True)
    )
    from billing.finance.tasks import export_run

    for job_id in queued:
        enqueue_on_commit(export_run, job_id)
    failed = ExportJob.objects.filter(
        status=ExportStatus.RUNNING, started_at__lt=now - EXPORT_RUNNING_AT_MOST
    ).update(
        status=ExportStatus.FAILED,
        error="The export was interrupted; run it again.",
        finished_at=now,
    )
    deleted, _by_model = ExportJob.objects.filter(
        status__in=[ExportStatus.DONE, ExportStatus.FAILED], finished_at__lt=now - EXPORT_KEEP
    ).delete()
    return {"requeued": len(queued), "failed": failed, "deleted": deleted}


def export_filename(job: ExportJob) -> str:
    """``register-2026-10_2026-10.csv``."""
    params = filter_params(job.params)
    return f"{job.kind}-{params['start']}_{params['end']}.{job.format}"


def _progress(job_id: int, rows: Iterable[dict], total: int | None) -> Iterator[dict]:
    """The rows, passed on; every ``PROGRESS_EVERY`` rows the job's progress is saved (out of
    ``total``, capped at 99 until the file is stored)."""
    for count, row in enumerate(rows, 1):
        yield row
        if count % PROGRESS_EVERY == 0:
            done = min(99, count * 100 // total) if total else min(99, count // PROGRESS_EVERY)
            ExportJob.objects.filter(pk=job_id).update(progress=done, rows=count)


def _journal_estimate(start: date, end: date) -> int:
    """Roughly how many journal rows (documents carry about four, ledger movements two)."""
    since, until = exports._day_bounds(start, end)
    documents = (
        Invoice.objects.filter(issued_at__gte=since, issued_at__lt=until)
        .exclude(status=InvoiceStatus.DRAFT)
        .count()
    )
    voided = Invoice.objects.filter(voided_at__gte=since, voided_at__lt=until).count()
    entries = LedgerEntry.objects.filter(
        created_at__gte=since, created_at__lt=until, kind__in=exports.LEDGER_JOURNAL_KINDS
    ).count()
    return 4 * documents + 3 * voided + 2 * entries


def export_rows(kind: str, flt: RegisterFilter) -> tuple[Sequence[Column], Iterator[dict]]:
    """The columns and rows of a tabular export of the filter (every kind but documents)."""
    if kind == ExportKind.REGISTER:
        return REGISTER_COLUMNS, exports.register_rows(flt)
    if kind == ExportKind.LINES:
        return LINE_COLUMNS, exports.line_rows(flt)
    start, end = _journal_days(flt)
    if kind == ExportKind.RECONCILIATION:
        return exports.RECONCILIATION_COLUMNS, exports.reconciliation_rows(start, end)
    return JOURNAL_COLUMNS, exports.journal_rows(start, end)


def export_write(
    format: str, flt: RegisterFilter, columns: Sequence[Column], rows: Iterable[dict]
) -> tuple[int, bytes]:
    """Stream ``rows`` into a temporary file in ``format`` (CSV or XLSX); returns (rows, bytes).
    Export jobs and admin's "export selected" actions write through here."""
    title = flt.title if flt.include_drafts else None
    if format == ExportFormat.CSV:
        with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as file:
            written = exports.write_csv(rows, columns, file, title=title)
            file.seek(0)
            return written, file.read().encode("utf-8")
    with tempfile.TemporaryFile("w+b") as file:
        written = exports.write_xlsx(rows, columns, file, flt.title)
        file.seek(0)
        return written, file.read()


def documents_zip_write(
    documents: QuerySet[Invoice], on_progress: Callable[[int, int], None] | None = None
) -> tuple[int, bytes]:
    """Every finalized document of ``documents``: its PDF, UBL and CII, in one ZIP by number
    (one invoice in memory at a time; the archive itself is a temporary file). ``on_progress``
    hears (written, total) every 20 documents."""
    import zipfile

    from billing.finance import einvoice

    documents = documents.exclude(status=InvoiceStatus.DRAFT).order_by("number")
    total = documents.count() if on_progress else 0
    written = 0
    with tempfile.TemporaryFile("w+b") as file:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
            for invoice in documents.iterator(chunk_size=100):
                einvoice.archive_add(archive, invoice)
                written += 1
                if on_progress and written % 20 == 0:
                    on_progress(written, total)
        file.seek(0)
        return written, file.read()


def _documents_zip(job: ExportJob, flt: RegisterFilter) -> tuple[int, bytes]:
    def progress(written: int, total: int) -> None:
        ExportJob.objects.filter(pk=job.pk).update(
            progress=min(99, written * 100 // total), rows=written
        )

    return documents_zip_write(exports._invoices(flt), progress)


def export_job_run(*, job_id: int) -> ExportJob:
    """Write the job's file. Safe to run twice: only a queued job is taken, so a job running,
    finished or failed is left alone. A failure marks the job failed with its message (the error
    is logged, not raised)."""
    # Claim it: only one run takes a queued job (a re-sent message finds it taken).
    claimed = ExportJob.objects.filter(pk=job_id, status=ExportStatus.QUEUED).update(
        status=ExportStatus.RUNNING, progress=0, rows=0, started_at=timezone.now()
    )
    job = ExportJob.objects.get(pk=job_id)
    if not claimed:
        return job
    try:
        flt = register_filter_build(params=job.params)
        if job.kind == ExportKind.DOCUMENTS:
            written, content = _documents_zip(job, flt)
        else:
            columns, rows = export_rows(job.kind, flt)
            if job.kind == ExportKind.REGISTER:
                total = register_count(flt)
            elif job.kind == ExportKind.LINES:
                total = InvoiceLine.objects.filter(
                    invoice__in=exports._invoices(flt).values("pk")
                ).count()
            elif job.kind == ExportKind.RECONCILIATION:
                total = None
            else:
                total = _journal_estimate(*_journal_days(flt))
            written, content = export_write(
                job.format, flt, columns, _progress(job.pk, rows, total)
            )
    except Exception as exc:  # any failure is the job's, shown to its owner
        logger.exception("export %s failed", job.pk)
        job.status = ExportStatus.FAILED
        job.error = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at"])
        return job
    job.status, job.progress, job.rows = ExportStatus.DONE, 100, written
    job.content, job.filename = content, export_filename(job)
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "progress", "rows", "content", "filename", "finished_at"])
    return job
