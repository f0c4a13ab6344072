"""Invoicing's Celery tasks (their names are the ones ``billing.tasks`` has always had)."""

from celery import shared_task


@shared_task(
    name="billing.send_invoice_email",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
)
def send_invoice_email(invoice_id: int) -> int:
    """Email an issued invoice or credit note with its PDF to the billing contacts."""
    from billing.invoicing import emails

    return emails.invoice_email_send(invoice_id)


@shared_task(
    name="billing.render_invoice_pdfs",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=6,
    soft_time_limit=600,
    time_limit=660,
)
def render_invoice_pdfs(self, invoice_ids: list[int], notify: bool = True) -> int:
    """Render and store the PDFs of issued invoices (the month close's, after commit), each
    once from the finalized invoice, then queue their emails. Those that fail to render are
    retried, alone, with a growing delay. Returns how many were handled."""
    from billing.invoicing import emails

    failed = emails.issued_documents_send(invoice_ids, notify=notify)
    if failed:
        raise self.retry(args=[failed, notify], countdown=60 * 2**self.request.retries)
    return len(invoice_ids)


@shared_task(
    name="billing.month_close",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=24,
    soft_time_limit=3 * 3600,
    time_limit=3 * 3600 + 300,
)
def month_close(self, month: str | None = None) -> str:
    """Close the previous month (or ``month``, 'YYYY-MM') and issue its invoices. Safe to run
    twice. Too early (the month's last hour is still in its grace period): retried then."""
    from datetime import datetime

    from django.utils import timezone

    from billing.invoicing import services as invoicing
    from portal.errors import Conflict

    try:
        report = invoicing.month_close(month)
    except Conflict as exc:
        if exc.code != "month_not_closable":
            raise
        wait = datetime.fromisoformat(exc.details["retry_at"]) - timezone.now()
        raise self.retry(countdown=max(30, int(wait.total_seconds()) + 30)) from None
    return report.summary()


@shared_task(name="billing.refresh_drafts", acks_late=True, soft_time_limit=1800, time_limit=1900)
def refresh_drafts() -> str:
    """Rebuild this month's draft invoices from the usage so far."""
    from billing.invoicing import services as invoicing

    return f"{invoicing.drafts_refresh()} draft(s) refreshed"
