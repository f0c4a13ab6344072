"""Every save or delete of what the catalog shows moves the catalog version, so cached offers
and catalog pages are rebuilt on the next request (``portal.catalog.cache``).

Allocations are in the list: ``allocation_release`` saves one, so a stop and a termination show
in availability at once. ``allocation_reserve`` writes its allocation with plain SQL
(``portal.sql.insert``, no signal) and calls ``catalog_changed`` itself. ``GpuSlotClaim`` is not: its rows only change with their
allocation, and a receiver would make ``QuerySet.delete()`` of claims load them one by one.
"""

from django.db.models.signals import post_delete, post_save

from portal.catalog import models
from portal.catalog.cache import catalog_changed

WATCHED = (
    models.GpuModel,
    models.MigProfile,
    models.Region,
    models.InstanceType,
    models.Price,
    models.Host,
    models.Gpu,
    models.Allocation,
)


def _changed(sender, **kwargs) -> None:
    catalog_changed()


def connect() -> None:
    for model in WATCHED:
        uid = f"catalog-version-{model._meta.model_name}"
        post_save.connect(_changed, sender=model, dispatch_uid=f"{uid}-save")
        post_delete.connect(_changed, sender=model, dispatch_uid=f"{uid}-delete")
