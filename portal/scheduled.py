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
    "close-usage-hours": {
        "task": "metering.close_recent_hours",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
}
