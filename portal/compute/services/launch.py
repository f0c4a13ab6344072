"""Launching an instance: check the request, the role, the quota and the billing hooks, take
capacity under row locks, create it ``pending``, and enqueue its sync on commit."""

import hashlib
import json
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from portal.accounts.models import SshKey
from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.catalog.models import Image, InstanceType, Price, Region
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import LIVE, State
from portal.compute.models import IdempotencyRecord, Instance, Volume, VolumeState
from portal.compute.services._checks import check_quota, run_launch_checks
from portal.compute.services._common import (
    NAME_PATTERN,
    announce_instance,
    announce_volume,
    dispatch,
    record_event,
)
from portal.errors import Conflict, InvalidInput


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    instance_type: str
    region: str
    image: str = ""
    ssh_key_ids: tuple[int, ...] = ()
    volume_ids: tuple[int, ...] = ()
    new_volume_gb: int | None = None
    user_data: str = ""

    def fingerprint(self) -> str:
        body = json.dumps(
            {
                **self.__dict__,
                "ssh_key_ids": sorted(self.ssh_key_ids),
                "volume_ids": sorted(self.volume_ids),
            },
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()


def _offer(organization, request: LaunchRequest, now):
    """The price in force now of the type in the region and the organisation's currency, with
    its (active) type and region: one query. None when any of them is missing."""
    return (
        Price.objects.filter(
            instance_type__name=request.instance_type,
            instance_type__is_active=True,
            region__code=request.region,
            region__is_active=True,
            currency=organization.currency,
            effective_from__lte=now,
        )
        .select_related("instance_type__gpu_model", "instance_type__mig_profile", "region")
        .order_by("-effective_from", "-id")
        .first()
    )


def _image(request: LaunchRequest, instance_type):
    """The image asked for (or the default) and whether it runs ``instance_type`` (an image
    that names no instance types runs all of them): one query."""
    images = Image.objects.filter(is_active=True)
    images = images.filter(name=request.image) if request.image else images.filter(is_default=True)
    if instance_type is not None:
        supported = Image.instance_types.through.objects.filter(image_id=OuterRef("pk"))
        images = images.annotate(
            restricted=Exists(supported),
            supports=Exists(supported.filter(instancetype_id=instance_type.pk)),
        )
    return images.first()


def _resolve(organization, request: LaunchRequest, now):
    """Everything the request names, checked: (name, type, region, image, keys, volumes, the
    hourly price now). On the usual path five queries: the offer (type, region and price in
    one), the image, the SSH keys, and the volumes when some are named."""
    errors = {}
    name = (request.name or "").strip().lower()
    if not NAME_PATTERN.match(name):
        errors["name"] = (
            "Use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit."
        )
    offer = _offer(organization, request, now)
    if offer is not None:
        instance_type, region = offer.instance_type, offer.region
    else:  # say which one is missing
        instance_type = (
            InstanceType.objects.filter(name=request.instance_type, is_active=True)
            .select_related("gpu_model", "mig_profile")
            .first()
        )
        region = Region.objects.filter(code=request.region, is_active=True).first()
        if instance_type is None:
            errors["instance_type"] = f"There is no instance type '{request.instance_type}'."
        if region is None:
            errors["region"] = f"There is no region '{request.region}'."
        if instance_type is not None and region is not None:
            errors["instance_type"] = (
                f"{instance_type.name} is not sold in {region.code} in {organization.currency}."
            )
    image = _image(request, instance_type)
    if image is None:
        errors["image"] = (
            f"There is no image '{request.image}'." if request.image else "Choose an image."
        )
    elif instance_type is not None and image.restricted and not image.supports:
        errors["image"] = f"Image {image.name} does not support {instance_type.name}."
    keys = list(SshKey.objects.filter(organization=organization, pk__in=request.ssh_key_ids))
    if not request.ssh_key_ids:
        errors["ssh_key_ids"] = "Choose at least one SSH key to log in with."
    elif len(keys) != len(set(request.ssh_key_ids)):
        errors["ssh_key_ids"] = "Some of these SSH keys do not exist in this organisation."
    if len(request.user_data) > 16384:
        errors["user_data"] = "User data is limited to 16 KiB."
    volumes = []
    if request.volume_ids:
        volumes = list(
            Volume.objects.select_for_update()
            .select_related("region")
            .filter(organization=organization, pk__in=request.volume_ids)
        )
    if len(volumes) != len(set(request.volume_ids)):
        errors["volume_ids"] = "Some of these volumes do not exist in this organisation."
    elif region is not None:
        for volume in volumes:
            if volume.state != VolumeState.AVAILABLE:
                errors["volume_ids"] = (
                    f"Volume {volume.name} is {volume.get_state_display().lower()}."
                )
            elif volume.region_id != region.pk:
                errors["volume_ids"] = (
                    f"Volume {volume.name} is in {volume.region.code}, not {region.code}."
                )
    if request.new_volume_gb is not None and not 1 <= request.new_volume_gb <= 65536:
        errors["new_volume_gb"] = "A new volume is 1 to 65,536 GB."
    if errors:
        raise InvalidInput(
            "The launch request is not valid; see details.",
            code=ComputeErrorCode.INVALID,
            details=errors,
        )
    return name, instance_type, region, image, keys, volumes, offer.on_demand_per_hour


def instance_launch(
    *, actor: Actor, request: LaunchRequest, idempotency_key: str | None = None
) -> tuple[Instance, bool]:
    """Launch an instance in one transaction: role, quota, billing checks, capacity under row
    locks, the instance in ``pending``, and the sync task on commit. Returns (instance, created).

    With an ``idempotency_key``, the same key and request return the first instance; the same
    key with another request is refused.
    """
    try:
        return _launch(actor=actor, request=request, idempotency_key=idempotency_key)
    except IntegrityError:
        if idempotency_key:  # a concurrent request with the same key won
            return _launch(actor=actor, request=request, idempotency_key=idempotency_key)
        raise


@transaction.atomic(durable=True)  # the outermost transaction: no caller wraps a launch
def _launch(
    *, actor: Actor, request: LaunchRequest, idempotency_key: str | None
) -> tuple[Instance, bool]:
    """The queries of a launch, each for a reason (``bench/launch_check.py`` counts them: 27
    on the usual path, a launch without volumes or an idempotency key, of which BEGIN, COMMIT
    and a savepoint's two; the same whatever the organisation runs):

    - the organisation's row lock and the actor's role read again under it (``authorize``):
      launches of one organisation queue here, so the quota, the name and the credit they
      check stay true until commit;
    - the offer (type, region and the price in force, one query), the image, the SSH keys
      (``_resolve``; the named volumes locked, when there are some);
    - the name not taken by a live instance;
    - the quota: the GPUs held per model (one aggregate) and the organisation's quotas;
    - billing's check (``COMPUTE_LAUNCH_CHECKS``): an overdue invoice, the billing profile,
      the burn figure with the ledger balance (one row, whatever the fleet);
    - the instance row;
    - capacity (``allocation_reserve``): a savepoint; the region's hosts, what their open
      allocations use and their GPUs of the model with the slots claimed (three reads, no
      lock); the chosen host's row locked (``SKIP LOCKED``); what is used and claimed on it
      read again under the lock (two); the allocation and its slot claims; the savepoint
      released;
    - the instance's allocation, host and dispatch time (one update);
    - the burn figure's committed burn (``COMPUTE_FOOTPRINT_HOOKS``, one update);
    - the ``pending`` event and the audit row;
    - with an idempotency key, the key looked up first and recorded last.
    """
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    organization = actor.organization
    fingerprint = request.fingerprint()
    if idempotency_key:
        record = IdempotencyRecord.objects.filter(
            organization=organization, key=idempotency_key
        ).first()
        if record is not None:
            if record.request_hash != fingerprint:
                raise Conflict(
                    "This Idempotency-Key was used with a different request.",
                    code=ComputeErrorCode.IDEMPOTENCY_KEY_REUSED,
                )
            return record.instance, False
    now = timezone.now()
    name, instance_type, region, image, keys, volumes, hourly = _resolve(organization, request, now)
    if Instance.objects.filter(
        organization=organization, name=name, state__in=[s.value for s in LIVE]
    ).exists():
        raise Conflict(
            f"An instance named '{name}' already exists.",
            code=ComputeErrorCode.NAME_TAKEN,
            details={"name": name},
        )
    check_quota(organization, instance_type)
    run_launch_checks(
        organization=organization,
        instance_type=instance_type,
        region=region,
        actor=actor,
        new_volume_gb=request.new_volume_gb or 0,
        hourly_price=hourly,
    )
    instance = Instance.objects.create(
        organization=organization,
        name=name,
        instance_type=instance_type,
        region=region,
        image=image,
        ssh_public_keys=[k.public_key for k in keys],
        user_data=request.user_data,
        disk_gb=settings.COMPUTE_BOOT_DISK_GB,
        backend=settings.PROVISIONING_BACKEND,
        created_by=actor.user if actor.api_key is None else None,
        created_by_api_key=actor.api_key,
    )
    allocation = capacity.allocation_reserve(
        instance_type=instance_type, region=region, holder=f"instance:{instance.pk}"
    )
    instance.allocation = allocation
    instance.host_id = allocation.host_id
    dispatch(instance, also=["allocation", "host"])  # one update, the sync enqueued on commit
    announce_instance(instance, None, State.PENDING, at=instance.created_at, hourly_price=hourly)
    for volume in volumes:
        volume.state, volume.instance = VolumeState.IN_USE, instance
        volume.save(update_fields=["state", "instance"])
    if request.new_volume_gb:
        volume = Volume.objects.create(
            organization=organization,
            region=region,
            name=f"{name}-data",
            size_gb=request.new_volume_gb,
            state=VolumeState.IN_USE,
            instance=instance,
        )
        announce_volume(volume, stored=True, at=volume.created_at)
    record_event(
        instance,
        actor=actor.label,
        reason="Launch requested",
        to_state=State.PENDING,
        detail={"host": allocation.host_name, "gpu_slots": allocation.gpu_slots},  # operators only
    )
    audit_record(
        actor=actor,
        action="instance.launch",
        target=instance,
        details={"type": instance_type.name, "region": region.code},
    )
    if idempotency_key:
        IdempotencyRecord.objects.create(
            organization=organization,
            key=idempotency_key,
            request_hash=fingerprint,
            instance=instance,
        )
    return instance, True
