"""The ledger's Celery task (its name is the one ``billing.tasks`` has always had)."""

from celery import shared_task

from billing.ledger import services


@shared_task(name="billing.debit_usage", acks_late=True, soft_time_limit=240, time_limit=280)
def debit_usage() -> str:
    """Rate closed usage and debit it from the credits ledger (idempotent)."""
    report = services.usage_debit_pending()
    return f"{report.debited} debited ({report.amount}), {report.skipped_free} free"
