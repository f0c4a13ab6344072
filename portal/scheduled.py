"""Periodic work, in one place. Each entry expires so a backlog never piles up."""

SCHEDULE = {
    "reconcile-instances": {
        "task": "compute.reconcile",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}
