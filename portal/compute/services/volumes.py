"""Volumes customers create and delete. Attaching happens at launch
(``portal.compute.services.launch``); detaching when the instance ends
(``portal.compute.services._common.detach_volumes``)."""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog.models import Region
from portal.compute.errors import ComputeErrorCode
from portal.compute.models import Volume, VolumeState
from portal.compute.services._checks import run_launch_checks
from portal.compute.services._common import NAME_PATTERN, announce_volume
from portal.errors import Conflict, InvalidInput, NotFound


@transaction.atomic(durable=True)
def volume_create(*, actor: Actor, name: str, region: str, size_gb: int) -> Volume:
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    errors = {}
    name = (name or "").strip().lower()
    if not NAME_PATTERN.match(name):
        errors["name"] = "Use 1 to 63 lowercase letters, digits and hyphens."
    region_obj = Region.objects.filter(code=region, is_active=True).first()
    if region_obj is None:
        errors["region"] = f"There is no region '{region}'."
    if not isinstance(size_gb, int) or not 1 <= size_gb <= 65536:
        errors["size_gb"] = "A volume is 1 to 65,536 GB."
    if errors:
        raise InvalidInput(
            _("The volume is not valid; see details."),
            code=ComputeErrorCode.INVALID,
            details=errors,
        )
    if (
        Volume.objects.filter(organization=actor.organization, name=name)
        .exclude(state=VolumeState.DELETED)
        .exists()
    ):
        raise Conflict(
            _("A volume named '%(name)s' already exists.") % {"name": name},
            code=ComputeErrorCode.NAME_TAKEN,
        )
    run_launch_checks(
        path_setting="COMPUTE_VOLUME_CHECKS",
        organization=actor.organization,
        region=region_obj,
        size_gb=size_gb,
    )
    volume = Volume.objects.create(
        organization=actor.organization, region=region_obj, name=name, size_gb=size_gb
    )
    announce_volume(volume, stored=True, at=volume.created_at)
    audit_record(actor=actor, action="volume.create", target=volume, details={"size_gb": size_gb})
    return volume


@transaction.atomic(durable=True)
def volume_delete(*, actor: Actor, volume_id: int) -> None:
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    volume = (
        Volume.objects.select_for_update()
        .filter(organization=actor.organization, pk=volume_id)
        .exclude(state=VolumeState.DELETED)
        .first()
    )
    if volume is None:
        raise NotFound(_("No such volume in this organisation."))
    if volume.state == VolumeState.IN_USE:
        raise Conflict(
            _("Volume %(volume)s is attached to %(instance)s; terminate that instance first.")
            % {"volume": volume.name, "instance": volume.instance.name},
            code=ComputeErrorCode.VOLUME_IN_USE,
        )
    volume.state, volume.deleted_at = VolumeState.DELETED, timezone.now()
    volume.save(update_fields=["state", "deleted_at"])
    announce_volume(volume, stored=False, at=volume.deleted_at)
    audit_record(actor=actor, action="volume.delete", target=volume)
