"""Periodic work, in one place: every entry is a crontab with an expiry, so beat sends it at
fixed wall-clock minutes (the same on every restart) and a backlog never piles up."""

from celery.schedules import crontab
from django.conf import settings


def _entry(task: str, schedule: crontab, *, expires: int) -> dict:
    """A beat entry for ``task``; a message not started within ``expires`` seconds is dropped
    (the next one does the same work, since every periodic task is idempotent)."""
    return {"task": task, "schedule": schedule, "options": {"expires": expires}}


SCHEDULE = {
    "reconcile-instances": _entry("compute.reconcile", crontab(), expires=55),
    # idle stop and scheduled shutdowns (portal.compute.services.idle)
    "instances-idle-watch": _entry("compute.idle_watch", crontab(), expires=55),
    "release-stopped-instances": _entry(
        "compute.release_stopped", crontab(minute="*/10"), expires=550
    ),
    "debit-usage": _entry("billing.debit_usage", crontab(minute="*/5"), expires=280),
    "billing-webhooks-retry": _entry("billing.webhooks_retry", crontab(minute="*/2"), expires=110),
    "billing-exports-sweep": _entry("billing.exports_sweep", crontab(minute="*/2"), expires=110),
    "billing-checkouts-expire": _entry(
        "billing.checkouts_expire", crontab(minute="*/10"), expires=550
    ),
    "billing-wallets-reconcile": _entry(
        "billing.wallets_reconcile", crontab(minute="*/2"), expires=110
    ),
    "billing-spend-watch": _entry("billing.spend_watch", crontab(), expires=55),
    "billing-refresh-drafts": _entry("billing.refresh_drafts", crontab(minute=17), expires=3000),
    "close-usage-hours": _entry(
        "metering.close_recent_hours", crontab(minute="1-59/5"), expires=280
    ),
    # The month close (billing.invoicing.tasks.month_close), on the 1st at settings.BILLING_MONTH_CLOSE_AT
    # UTC. It retries itself until the month's last hour may be closed (metering's CLOSE_GRACE
    # after midnight).
    "billing-month-close": _entry(
        "billing.month_close",
        crontab(
            minute=settings.BILLING_MONTH_CLOSE_AT["minute"],
            hour=settings.BILLING_MONTH_CLOSE_AT["hour"],
            day_of_month=1,
        ),
        expires=6 * 3600,
    ),
    # a no-op unless SLURM_SYNC_BACKENDS names Slurm backends to mirror
    "slurm-sync": _entry("catalog.slurm_sync", crontab(), expires=55),
}
