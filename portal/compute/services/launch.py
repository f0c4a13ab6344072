"""Launching an instance: check the request, the role, the quota and the billing hooks, take
capacity under row locks, create it ``pending``, and enqueue its sync on commit."""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.catalog.models import GpuModel, Image, InstanceType, MigProfile, Price, Region
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import LIVE, State
from portal.compute.models import (
    IDLE_MINUTES,
    IDLE_THRESHOLD_PCT,
    IdempotencyRecord,
    Instance,
    Volume,
    VolumeState,
)
from portal.compute.services._checks import check_quota, run_launch_checks
from portal.compute.services._common import (
    NAME_PATTERN,
    announce_instance,
    announce_volume,
    dispatch,
    record_event,
)
from portal.compute.services.idle import stop_settings_errors
from portal.errors import Conflict, InvalidInput
from portal.provisioning.cloud_init import UserDataInvalid, validate_user_data
from portal.sql import Columns, insert, placeholders, rows


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
    # stopping by itself (``portal.compute.services.idle``)
    idle_stop_enabled: bool = False
    idle_stop_threshold_pct: int = IDLE_THRESHOLD_PCT[1]
    idle_stop_minutes: int = IDLE_MINUTES[1]
    scheduled_stop_at: datetime | None = None

    def fingerprint(self) -> str:
        body = {
            **self.__dict__,
            "ssh_key_ids": sorted(self.ssh_key_ids),
            "volume_ids": sorted(self.volume_ids),
        }
        # the stop settings count only when given, so a request without them keeps the
        # fingerprint it had before they existed (an Idempotency-Key retried across a deploy)
        for name, default in _STOP_DEFAULTS.items():
            if body[name] == default:
                del body[name]
        if body.get("scheduled_stop_at") is not None:
            body["scheduled_stop_at"] = body["scheduled_stop_at"].isoformat()
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


_STOP_DEFAULTS = {
    "idle_stop_enabled": False,
    "idle_stop_threshold_pct": IDLE_THRESHOLD_PCT[1],
    "idle_stop_minutes": IDLE_MINUTES[1],
    "scheduled_stop_at": None,
}


_PRICE, _TYPE, _MODEL, _PROFILE, _REGION = (
    Columns(Price, "p"),
    Columns(InstanceType, "t"),
    Columns(GpuModel, "m"),
    Columns(MigProfile, "mp"),
    Columns(Region, "r"),
)
_OFFER_SQL = f"""
SELECT {_PRICE.sql}, {_TYPE.sql}, {_MODEL.sql}, {_PROFILE.sql}, {_REGION.sql}
FROM catalog_price p
JOIN catalog_instancetype t ON t.id = p.instance_type_id
JOIN catalog_gpumodel m ON m.id = t.gpu_model_id
LEFT JOIN catalog_migprofile mp ON mp.id = t.mig_profile_id
JOIN catalog_region r ON r.id = p.region_id
WHERE t.name = %s AND t.is_active AND r.code = %s AND r.is_active
  AND p.currency = %s AND p.effective_from <= %s
ORDER BY p.effective_from DESC, p.id DESC
LIMIT 1
"""  # noqa: S608  # nosec B608: the column lists come from the models, values are parameters


def _offer(organization, request: LaunchRequest, now) -> Price | None:
    """The price in force now of the type in the region and the organisation's currency, with
    its (active) type, the type's GPU model and MIG profile, and its (active) region: one
    query. None when any of them is missing."""
    found = rows(
        _OFFER_SQL,
        [request.instance_type, request.region, organization.currency, now],
        [*_PRICE.fields, *_TYPE.fields, *_MODEL.fields, *_PROFILE.fields, *_REGION.fields],
    )
    if not found:
        return None
    row, at = found[0], 0
    price, at = _PRICE.instance(row, at), at + len(_PRICE)
    instance_type, at = _TYPE.instance(row, at), at + len(_TYPE)
    instance_type.gpu_model, at = _MODEL.instance(row, at), at + len(_MODEL)
    instance_type.mig_profile, at = _PROFILE.instance(row, at), at + len(_PROFILE)
    price.instance_type, price.region = instance_type, _REGION.instance(row, at)
    return price


_IMAGE = Columns(Image, "i")
_IMAGE_SQL = f"""
SELECT {_IMAGE.sql},
    EXISTS (SELECT 1 FROM catalog_image_instance_types s WHERE s.image_id = i.id),
    EXISTS (SELECT 1 FROM catalog_image_instance_types s
            WHERE s.image_id = i.id AND s.instancetype_id = %s)
FROM catalog_image i
WHERE i.is_active AND {{which}}
ORDER BY i.is_default DESC, i.name
LIMIT 1
"""  # noqa: S608  # nosec B608: the column list comes from the model, values are parameters
_IMAGE_NAMED = _IMAGE_SQL.format(which="i.name = %s")
_IMAGE_DEFAULT = _IMAGE_SQL.format(which="i.is_default")


def _image(request: LaunchRequest, instance_type):
    """The image asked for (or the default) and whether it runs ``instance_type`` (an image
    that names no instance types runs all of them): one query."""
    type_id = instance_type.pk if instance_type is not None else None
    if request.image:
        found = rows(_IMAGE_NAMED, [type_id, request.image], _IMAGE.fields)
    else:
        found = rows(_IMAGE_DEFAULT, [type_id], _IMAGE.fields)
    if not found:
        return None
    image = _IMAGE.instance(found[0], 0)
    image.restricted, image.supports = (bool(v) for v in found[0][len(_IMAGE) :])
    return image


def _public_keys(organization, key_ids: tuple[int, ...]) -> list[str]:
    """The public keys of the organisation's SSH keys among ``key_ids``: one query."""
    if not key_ids:
        return []
    sql = f"SELECT public_key FROM accounts_sshkey WHERE organization_id = %s AND id IN ({placeholders(key_ids)}) ORDER BY name, id"  # noqa: S608  # nosec B608: placeholders only
    return [key for (key,) in rows(sql, [organization.pk, *key_ids])]


LIVE_STATES = sorted(s.value for s in LIVE)
_NAME_TAKEN_SQL = f"SELECT 1 FROM compute_instance WHERE organization_id = %s AND name = %s AND state IN ({placeholders(LIVE_STATES)}) LIMIT 1"  # noqa: S608  # nosec B608: placeholders only


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
    keys = _public_keys(organization, request.ssh_key_ids)
    if not request.ssh_key_ids:
        errors["ssh_key_ids"] = "Choose at least one SSH key to log in with."
    elif len(keys) != len(set(request.ssh_key_ids)):
        errors["ssh_key_ids"] = "Some of these SSH keys do not exist in this organisation."
    try:  # cloud-init must be able to run it: a #cloud-config mapping or a #! script, 16 KiB
        validate_user_data(request.user_data)
    except UserDataInvalid as exc:
        errors["user_data"] = str(exc)
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
    errors.update(
        stop_settings_errors({name: getattr(request, name) for name in _STOP_DEFAULTS}, now=now)
    )
    if errors:
        raise InvalidInput(
            _("The launch request is not valid; see details."),
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
    """The statements of a launch, each for a reason (``bench/launch_check.py`` counts them:
    28 on the usual path, a launch without volumes or an idempotency key, of which BEGIN,
    COMMIT, a savepoint's two and the catalog version's bump after commit; the same whatever
    the organisation runs). The reads and the
    appended rows are plain SQL (``portal.sql``, prepared on PostgreSQL): building them through
    the ORM cost more than running them.

    - the organisation's row lock, then the actor's role read again under it (``authorize``):
      launches of one organisation queue here, so the quota, the name and the credit they
      check stay true until commit;
    - the offer (type with its GPU model and MIG profile, region and the price in force, one
      query), the image, the SSH keys (``_resolve``; the named volumes locked, when there are
      some);
    - the name not taken by a live instance;
    - the quota: the GPUs held per model and the organisation's quotas (one query);
    - accounts' verification check (``COMPUTE_LAUNCH_CHECKS``): nothing outside the regions
      ``VERIFICATION_POLICY`` covers; inside them the organisation's ``verified_as`` (one
      primary-key read under its lock);
    - billing's check (``COMPUTE_LAUNCH_CHECKS``): an overdue invoice, the burn figure with the
      ledger balance and the billing profile (one row, whatever the fleet);
    - the instance row;
    - capacity (``allocation_reserve``): a savepoint; the region's hosts, what their open
      allocations use and their GPUs of the model with the slots claimed (three reads, no
      lock); the chosen host's row locked (``SKIP LOCKED``); what is used and claimed on it
      read again under the lock (two); the allocation, the catalog version moved, and its
      slot claims; the savepoint released;
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
                    _("This Idempotency-Key was used with a different request."),
                    code=ComputeErrorCode.IDEMPOTENCY_KEY_REUSED,
                )
            return record.instance, False
    now = timezone.now()
    name, instance_type, region, image, keys, volumes, hourly = _resolve(organization, request, now)
    if rows(_NAME_TAKEN_SQL, [organization.pk, name, *LIVE_STATES]):
        raise Conflict(
            _("An instance named '%(name)s' already exists.") % {"name": name},
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
    instance = Instance(
        organization=organization,
        name=name,
        instance_type=instance_type,
        region=region,
        image=image,
        ssh_public_keys=keys,
        user_data=validate_user_data(request.user_data),  # with \n line endings
        disk_gb=settings.COMPUTE_BOOT_DISK_GB,
        backend=settings.PROVISIONING_BACKEND,
        created_by=actor.user if actor.api_key is None else None,
        created_by_api_key=actor.api_key,
        idle_stop_enabled=request.idle_stop_enabled,
        idle_stop_threshold_pct=request.idle_stop_threshold_pct,
        idle_stop_minutes=request.idle_stop_minutes,
        scheduled_stop_at=request.scheduled_stop_at,
    )
    insert(instance)
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
        reason=gettext_noop("Launch requested"),
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
