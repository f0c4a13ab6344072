"""Periodic work, in one place. Each entry expires so a backlog never piles up."""

SCHEDULE = {
    "reconcile-instances": {
        "task": "compute.reconcile",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "debit-usage": {
        "task": "billing.debit_usage",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "billing-webhooks-retry": {
        "task": "billing.webhooks_retry",
        "schedule": 120.0,
        "options": {"expires": 110},
    },
    "billing-exports-sweep": {
        "task": "billing.exports_sweep",
        "schedule": 120.0,
        "options": {"expires": 110},
    },
    "billing-checkouts-expire": {
        "task": "billing.checkouts_expire",
        "schedule": 600.0,
        "options": {"expires": 550},
    },
    "billing-spend-watch": {
        "task": "billing.spend_watch",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "billing-refresh-drafts": {
        "task": "billing.refresh_drafts",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    "close-usage-hours": {
        "task": "metering.close_recent_hours",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
}

# --- Billing: the month close (billing.invoicing.services.month_close), on the 1st at
# settings.BILLING_MONTH_CLOSE_AT UTC. It retries itself until the month's last hour may be
# closed (metering's CLOSE_GRACE after midnight).
from celery.schedules import crontab  # noqa: E402
from django.conf import settings  # noqa: E402

SCHEDULE["billing-month-close"] = {
    "task": "billing.month_close",
    "schedule": crontab(
        minute=settings.BILLING_MONTH_CLOSE_AT["minute"],
        hour=settings.BILLING_MONTH_CLOSE_AT["hour"],
        day_of_month=1,
    ),
    "options": {"expires": 6 * 3600},
}
