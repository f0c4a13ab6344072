"""Celery tasks for instances: ids in, a service call, safe to run twice."""

from celery import shared_task
from django.conf import settings

from portal.compute import services
from portal.provisioning.base import TransientBackendError

# How a sync with the backend runs: acknowledged late, retried with backoff on transient errors.
SYNC_OPTIONS = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (TransientBackendError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
    "soft_time_limit": 240,
    "time_limit": 300,
}


def _report(report) -> dict:
    """A sweep's report as the task's (JSON) result."""
    return {key: list(value) for key, value in report.__dict__.items()}


@shared_task(bind=True, name="compute.instance_sync", **SYNC_OPTIONS)
def instance_sync(self, instance_id: int) -> None:
    """Move an instance one step towards its desired state; poll again while it moves."""
    if services.instance_sync(instance_id=instance_id):
        if self.request.is_eager:
            # run in-process (CELERY_TASK_ALWAYS_EAGER): a countdown cannot wait, so polling
            # here would spin; the reconciler's next sweep or the caller syncs again
            return
        # this poll chain is alive: the reconciler must not start another one
        services.mark_dispatched(instance_id=instance_id)
        instance_sync.apply_async((instance_id,), countdown=settings.COMPUTE_POLL_SECONDS)


@shared_task(name="compute.reconcile", acks_late=True, soft_time_limit=50, time_limit=55)
def reconcile() -> dict:
    report = services.reconcile()
    return _report(report)


@shared_task(name="compute.idle_watch", acks_late=True, soft_time_limit=50, time_limit=55)
def idle_watch() -> dict:
    """Stop the instances whose GPUs sat idle long enough or whose shutdown time came."""
    report = services.idle_watch()
    return _report(report)


@shared_task(name="compute.release_stopped", acks_late=True, soft_time_limit=500, time_limit=540)
def release_stopped() -> dict:
    """Notices before, then the release of, instances stopped too long (volumes kept)."""
    report = services.release_due()
    return _report(report)


@shared_task(name="compute.cluster_sync", **SYNC_OPTIONS)
def cluster_sync(cluster_id: int) -> None:
    """Create a pending cluster on its backend, or end a terminating one (safe to run twice)."""
    from portal.compute.services.clusters import cluster_sync as sync

    sync(cluster_id=cluster_id)
