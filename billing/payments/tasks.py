"""Payments' Celery tasks (their names are the ones ``billing.tasks`` has always had)."""

from celery import shared_task


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


@shared_task(name="billing.invoice_charge", acks_late=True, soft_time_limit=60, time_limit=90)
def invoice_charge(invoice_id: int) -> str:
    """Charge a finalized invoice to the saved card (invoiced organisations)."""
    from billing.payments.services import invoice_charge as charge

    payment = charge(invoice_id)
    return "no card or nothing due" if payment is None else f"payment {payment.pk} {payment.status}"


@shared_task(name="billing.wallets_reconcile", acks_late=True, soft_time_limit=240, time_limit=280)
def wallets_reconcile() -> str:
    """Ask Alipay / WeChat Pay about wallet top-ups still pending (a lost notification) and
    close the expired ones."""
    from billing.payments import wallets

    counts = wallets.wallets_reconcile()
    return ", ".join(f"{count} {name}" for name, count in counts.items())
