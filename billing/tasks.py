from celery import shared_task

from billing import services


@shared_task(name="billing.debit_usage", acks_late=True, soft_time_limit=240, time_limit=280)
def debit_usage() -> str:
    """Rate closed usage and debit it from the credits ledger (idempotent)."""
    report = services.usage_debit_pending()
    return f"{report.debited} debited ({report.amount}), {report.skipped_free} free"


@shared_task(name="billing.webhook_process", acks_late=True, soft_time_limit=60, time_limit=90)
def webhook_process(event_pk: int) -> str:
    """Apply one stored provider event (once, whatever the number of deliveries)."""
    from billing.payments import events

    return events.webhook_process(event_pk)


@shared_task(name="billing.webhooks_retry", acks_late=True, soft_time_limit=240, time_limit=280)
def webhooks_retry() -> str:
    """Apply events whose task was lost (e.g. the broker was down when they arrived)."""
    from billing.payments import events

    return f"{events.webhooks_retry()} event(s) processed"


@shared_task(name="billing.checkouts_expire", acks_late=True, soft_time_limit=60, time_limit=90)
def checkouts_expire() -> str:
    """Cancel top-ups whose fake checkout page expired unpaid."""
    from billing.payments import services

    return f"{services.checkouts_expire()} checkout(s) expired"


@shared_task(name="billing.spend_watch", acks_late=True, soft_time_limit=240, time_limit=280)
def spend_watch() -> dict:
    """Warn as credit runs low, auto-recharge, stop instances after the grace period."""
    from billing import spend

    return spend.spend_watch()


# --- Invoices (billing.invoicing) ----------------------------------------------------------


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
    from billing import emails

    return emails.invoice_email_send(invoice_id)


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

    from billing import invoicing
    from portal.errors import Conflict

    try:
        report = invoicing.month_close(month)
    except Conflict as exc:
        if exc.code != "month_not_closable":
            raise
        wait = datetime.fromisoformat(exc.details["retry_at"]) - timezone.now()
        raise self.retry(countdown=max(30, int(wait.total_seconds()) + 30)) from None
    return report.summary()


@shared_task(name="billing.invoice_charge", acks_late=True, soft_time_limit=60, time_limit=90)
def invoice_charge(invoice_id: int) -> str:
    """Charge a finalized invoice to the saved card (invoiced organisations)."""
    from billing.payments.services import invoice_charge as charge

    payment = charge(invoice_id)
    return "no card or nothing due" if payment is None else f"payment {payment.pk} {payment.status}"


@shared_task(name="billing.refresh_drafts", acks_late=True, soft_time_limit=1800, time_limit=1900)
def refresh_drafts() -> str:
    """Rebuild this month's draft invoices from the usage so far."""
    from billing import invoicing

    return f"{invoicing.drafts_refresh()} draft(s) refreshed"


# --- Finance exports (billing.finance) -----------------------------------------------------


@shared_task(
    name="billing.export_run",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=1800,
    time_limit=1900,
)
def export_run(job_id: int) -> str:
    """Write one finance export's file (a finished job is left alone)."""
    from billing import finance

    job = finance.export_job_run(job_id=job_id)
    return f"export {job.pk} {job.status}: {job.rows} row(s)"


@shared_task(name="billing.exports_sweep", acks_late=True, soft_time_limit=60, time_limit=90)
def exports_sweep() -> dict:
    """Re-send exports whose message was lost; fail those whose worker died; delete old ones."""
    from billing import finance

    return finance.export_jobs_sweep()
