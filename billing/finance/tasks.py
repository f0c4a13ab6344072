"""Finance exports' Celery tasks (their names are the ones ``billing.tasks`` has always had)."""

from celery import shared_task


@shared_task(
    name="billing.export_run",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=1800,
    time_limit=1900,
)
def export_run(job_id: int) -> str:
    """Write one finance export's file (a finished job is left alone)."""
    from billing.finance import services as finance

    job = finance.export_job_run(job_id=job_id)
    return f"export {job.pk} {job.status}: {job.rows} row(s)"


@shared_task(name="billing.exports_sweep", acks_late=True, soft_time_limit=60, time_limit=90)
def exports_sweep() -> dict:
    """Re-send exports whose message was lost; fail those whose worker died; delete old ones."""
    from billing.finance import services as finance

    return finance.export_jobs_sweep()
