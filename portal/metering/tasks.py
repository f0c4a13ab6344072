from celery import shared_task

from portal.metering import services


@shared_task(
    name="metering.close_recent_hours", acks_late=True, soft_time_limit=240, time_limit=280
)
def close_recent_hours() -> int:
    """Close the hours that ended recently (idempotent; a missed run is caught up)."""
    return services.usage_close_recent()
