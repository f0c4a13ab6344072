"""Fapiao Celery tasks."""

from celery import shared_task


@shared_task(
    name="billing.fapiao_issued_notify",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
)
def fapiao_issued_notify(request_id: int) -> int:
    """Tell the customer their fapiao is issued (once: a second run sends nothing)."""
    from billing.fapiao import emails

    return emails.issued_email_send(request_id)
