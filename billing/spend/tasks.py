"""Spend controls' Celery task (its name is the one ``billing.tasks`` has always had)."""

from celery import shared_task


@shared_task(name="billing.spend_watch", acks_late=True, soft_time_limit=240, time_limit=280)
def spend_watch() -> dict:
    """Warn as credit runs low, auto-recharge, stop instances before the credit runs out."""
    from billing.spend import services

    return services.spend_watch()
