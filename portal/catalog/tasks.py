"""The catalog's background work: mirroring Slurm clusters into the hosts."""

import logging

from celery import shared_task
from django.conf import settings

from portal.catalog.slurm_sync import hosts_sync_slurm
from portal.provisioning.base import TransientBackendError

log = logging.getLogger(__name__)


@shared_task(name="catalog.slurm_sync", acks_late=True, soft_time_limit=50, time_limit=55)
def slurm_sync() -> dict:
    """Mirror each cluster of ``SLURM_SYNC_BACKENDS`` (none by default); a cluster that does
    not answer is tried again at the next run (every minute)."""
    done = {}
    for alias in settings.SLURM_SYNC_BACKENDS:
        try:
            result = hosts_sync_slurm(alias=alias)
        except TransientBackendError as exc:
            log.warning("slurm sync of %s: Slurm did not answer: %s", alias, exc)
            done[alias] = "unanswered"
            continue
        done[alias] = {
            "created": list(result.created),
            "changed": list(result.changed),
            "offline": list(result.offline),
            "foreign_gpus": result.foreign_gpus,
        }
    return done
