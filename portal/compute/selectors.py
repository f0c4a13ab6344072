"""Reads about instances and volumes, always scoped to one organisation."""

from django.db.models import QuerySet

from portal.compute.models import Instance, InstanceEvent, Volume, VolumeState
from portal.errors import NotFound


def instances_list(organization) -> QuerySet[Instance]:
    return Instance.objects.filter(organization=organization).select_related(
        "instance_type__gpu_model", "instance_type__mig_profile", "region", "image"
    )


def instance_get(organization, instance_id: int) -> Instance:
    instance = instances_list(organization).filter(pk=instance_id).first()
    if instance is None:
        raise NotFound("No such instance in this organisation.")
    return instance


def instance_events(instance: Instance) -> QuerySet[InstanceEvent]:
    return InstanceEvent.objects.filter(instance=instance).order_by("created_at", "id")


def organization_footprint(organization) -> tuple[int, int]:
    """How many live instances and volumes an organisation still has."""
    from portal.compute.lifecycle import LIVE, State

    live = Instance.objects.filter(
        organization=organization, state__in=[s.value for s in LIVE | {State.TERMINATING}]
    ).count()
    return live, volumes_list(organization).count()


def organization_holdings(organization) -> dict[str, int]:
    """The accounts hook refusing to delete an organisation that still has instances or
    volumes (settings.ACCOUNTS_ORGANIZATION_DELETE_CHECKS)."""
    live_instances, volumes = organization_footprint(organization)
    return {"instances": live_instances, "volumes": volumes}


def volumes_list(organization) -> QuerySet[Volume]:
    return (
        Volume.objects.filter(organization=organization)
        .exclude(state=VolumeState.DELETED)
        .select_related("region", "instance")
    )
