"""Every write about instances and volumes: launch, actions, sync with the backend, reconcile.

Customer-facing services lock the organisation (then hosts, then the instance: the house lock
order), check the role, write an event and an audit row, and enqueue the sync task on commit.
``instance_sync`` moves one instance one step towards its desired state by asking the
provisioning backend; ``reconcile`` is the periodic sweep that leaves nothing stuck.
"""

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, IntegerField, Q, Sum, When
from django.utils import timezone
from django.utils.module_loading import import_string

from portal.accounts.locks import lock_organization
from portal.accounts.models import SshKey
from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.catalog.models import Image, InstanceType, Price, Region
from portal.compute.lifecycle import (
    HOLDS_CAPACITY,
    LIVE,
    TRANSITIONAL,
    Action,
    State,
    action_target,
    check_transition,
)
from portal.compute.models import (
    BackendOrphan,
    DesiredState,
    IdempotencyRecord,
    Instance,
    InstanceEvent,
    Quota,
    Volume,
    VolumeState,
)
from portal.errors import Conflict, InvalidInput, NotFound
from portal.observability import metrics
from portal.provisioning import get_backend
from portal.provisioning.base import (
    CapacityError,
    GpuDevice,
    MachineSpec,
    MachineStatus,
    ObservedState,
    PermanentBackendError,
    TransientBackendError,
)

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIG_COMPUTE_SLICES = Decimal(7)


class QuotaExceeded(Conflict):
    code = "quota_exceeded"


# --- helpers ----------------------------------------------------------------------------------


def _event(
    instance: Instance,
    *,
    actor: str,
    reason: str,
    from_state: str = "",
    to_state: str = "",
    detail=None,
):
    return InstanceEvent.objects.create(
        instance=instance,
        actor_label=actor[:200],
        reason=reason[:300],
        from_state=from_state,
        to_state=to_state,
        detail=detail or {},
    )


def _transition(instance: Instance, target: State, *, actor: str, reason: str, detail=None) -> None:
    """Move a locked instance to ``target`` (if the lifecycle allows it) and record the event."""
    check_transition(instance.state, target)
    previous = instance.state
    instance.state = target
    instance.state_changed_at = timezone.now()
    instance.status_message = reason[:300] if target == State.FAILED else ""
    instance.save(update_fields=["state", "state_changed_at", "status_message"])
    _event(
        instance, actor=actor, reason=reason, from_state=previous, to_state=target, detail=detail
    )
    metrics.instance_transitioned(instance, previous, target)


def _dispatch(instance: Instance) -> None:
    """Enqueue the sync task after commit and remember when (the reconciler re-sends lost work)."""
    from portal.compute.tasks import instance_sync

    instance.dispatched_at = timezone.now()
    instance.save(update_fields=["dispatched_at"])
    instance_id = instance.pk

    def send() -> None:
        try:
            instance_sync.delay(instance_id)
        except Exception:  # the broker is down: the reconciler dispatches it again later
            logger.warning(
                "could not enqueue sync of instance %s; the reconciler will",
                instance_id,
                exc_info=True,
                extra={"instance_id": instance_id},
            )

    transaction.on_commit(send)


def mark_dispatched(*, instance_id: int) -> None:
    Instance.objects.filter(pk=instance_id).update(dispatched_at=timezone.now())


def _release(instance: Instance) -> None:
    if instance.allocation_id is not None:
        capacity.allocation_release(allocation=instance.allocation)
        instance.allocation = None
        instance.host = None
        instance.save(update_fields=["allocation", "host"])


def _locked(instance_id: int, organization=None) -> Instance:
    """The instance, row-locked, after its organisation's lock (the house lock order:
    organisation, hosts, instance), so syncs and customer actions never deadlock."""
    org_id = (
        Instance.objects.filter(pk=instance_id).values_list("organization_id", flat=True).first()
    )
    if org_id is None or (organization is not None and org_id != organization.pk):
        raise NotFound("No such instance in this organisation.")
    if organization is None:
        lock_organization(org_id)
    return (
        Instance.objects.select_for_update(of=("self",))
        .select_related(
            "instance_type__mig_profile", "instance_type__gpu_model", "region", "allocation", "host"
        )
        .get(pk=instance_id)
    )


def gpu_units(instance_type: InstanceType) -> Decimal:
    """GPUs one instance holds for quota: its GPU count, or its MIG slice's share (n/7)."""
    if instance_type.mig_profile_id:
        return Decimal(instance_type.mig_profile.compute_slices) / MIG_COMPUTE_SLICES
    return Decimal(instance_type.gpu_count)


def _check_quota(
    organization, instance_type: InstanceType, *, exclude: Instance | None = None
) -> None:
    """Refuse with ``quota_exceeded`` if this type would take the organisation over its GPU
    quota, in total or for the type's GPU model. One aggregate query, whatever the fleet size."""
    sevenths = Case(
        When(instance_type__mig_profile__isnull=True, then=F("instance_type__gpu_count") * 7),
        default=F("instance_type__mig_profile__compute_slices"),
        output_field=IntegerField(),
    )
    holding = (
        Instance.objects.filter(
            organization=organization, state__in=[s.value for s in HOLDS_CAPACITY]
        )
        .exclude(pk=exclude.pk if exclude else None)
        .values("instance_type__gpu_model_id")
        .annotate(sevenths=Sum(sevenths))
    )
    per_model = {
        row["instance_type__gpu_model_id"]: Decimal(row["sevenths"]) / MIG_COMPUTE_SLICES
        for row in holding
    }
    total = sum(per_model.values(), Decimal(0))
    same_model = per_model.get(instance_type.gpu_model_id, Decimal(0))
    needed = gpu_units(instance_type)
    quotas = {q.gpu_model_id: q.max_gpus for q in Quota.objects.filter(organization=organization)}
    limits = [(None, quotas.get(None, settings.DEFAULT_GPU_QUOTA), total)]
    if instance_type.gpu_model_id in quotas:
        limits.append((instance_type.gpu_model, quotas[instance_type.gpu_model_id], same_model))
    for model, limit, used in limits:
        if used + needed > limit:
            what = f"{model} GPUs" if model else "GPUs in total"
            used_text = f"{used.quantize(Decimal('0.01')).normalize()}"
            raise QuotaExceeded(
                f"This launch needs {needed.quantize(Decimal('0.01')).normalize()} more {what}; your quota is "
                f"{limit} and {used_text} are in use. Ask support to raise it or stop an instance.",
                details={
                    "limit": limit,
                    "in_use": used_text,
                    "requested": str(needed.quantize(Decimal("0.01")).normalize()),
                    "gpu_model": model.code if model else None,
                },
            )


def _run_launch_checks(*, path_setting: str = "COMPUTE_LAUNCH_CHECKS", **context) -> None:
    """Hooks that may refuse a launch or a start (billing fills them in: can the organisation
    pay?)."""
    for path in getattr(settings, path_setting):
        import_string(path)(**context)


def _spec(instance: Instance) -> MachineSpec:
    gpus = []
    if instance.allocation is not None:
        from portal.catalog.models import Gpu

        by_uuid = {
            g.uuid: g
            for g in Gpu.objects.filter(uuid__in=[s["gpu"] for s in instance.allocation.gpu_slots])
        }
        for slot in instance.allocation.gpu_slots:
            gpu = by_uuid[slot["gpu"]]
            mig = instance.instance_type.mig_profile_id is not None
            gpus.append(
                GpuDevice(
                    uuid=gpu.uuid,
                    pci_bus_id=gpu.pci_bus_id,
                    mig_start=slot["start"] if mig else None,
                    mig_size=slot["size"] if mig else None,
                )
            )
    return MachineSpec(
        machine_id=instance.machine_id,
        name=instance.name,
        host_name=instance.host.name if instance.host else "",
        vcpus=instance.instance_type.vcpus,
        ram_gib=instance.instance_type.ram_gib,
        disk_gb=instance.disk_gb,
        image=instance.image.name,
        gpus=tuple(gpus),
        ssh_public_keys=tuple(instance.ssh_public_keys),
        user_data=instance.user_data,
    )


# --- launch -----------------------------------------------------------------------------------


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


def _resolve(organization, request: LaunchRequest):
    errors = {}
    name = (request.name or "").strip().lower()
    if not NAME_PATTERN.match(name):
        errors["name"] = (
            "Use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit."
        )
    instance_type = (
        InstanceType.objects.filter(name=request.instance_type, is_active=True)
        .select_related("gpu_model", "mig_profile")
        .first()
    )
    if instance_type is None:
        errors["instance_type"] = f"There is no instance type '{request.instance_type}'."
    region = Region.objects.filter(code=request.region, is_active=True).first()
    if region is None:
        errors["region"] = f"There is no region '{request.region}'."
    image = (
        Image.objects.filter(name=request.image, is_active=True).first()
        if request.image
        else Image.objects.filter(is_default=True, is_active=True).first()
    )
    if image is None:
        errors["image"] = (
            f"There is no image '{request.image}'." if request.image else "Choose an image."
        )
    elif instance_type is not None:
        supported = image.instance_types.all()
        if supported.exists() and not supported.filter(pk=instance_type.pk).exists():
            errors["image"] = f"Image {image.name} does not support {instance_type.name}."
    keys = list(SshKey.objects.filter(organization=organization, pk__in=request.ssh_key_ids))
    if not request.ssh_key_ids:
        errors["ssh_key_ids"] = "Choose at least one SSH key to log in with."
    elif len(keys) != len(set(request.ssh_key_ids)):
        errors["ssh_key_ids"] = "Some of these SSH keys do not exist in this organisation."
    if len(request.user_data) > 16384:
        errors["user_data"] = "User data is limited to 16 KiB."
    volumes = list(
        Volume.objects.select_for_update().filter(
            organization=organization, pk__in=request.volume_ids
        )
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
    if instance_type is not None and region is not None and "region" not in errors:
        offered = Price.objects.filter(
            instance_type=instance_type,
            region=region,
            currency=organization.currency,
            effective_from__lte=timezone.now(),
        ).exists()
        if not offered:
            errors["instance_type"] = (
                f"{instance_type.name} is not sold in {region.code} in {organization.currency}."
            )
    if errors:
        raise InvalidInput(
            "The launch request is not valid; see details.", code="invalid", details=errors
        )
    return name, instance_type, region, image, keys, volumes


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


@transaction.atomic
def _launch(
    *, actor: Actor, request: LaunchRequest, idempotency_key: str | None
) -> tuple[Instance, bool]:
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
                    code="idempotency_key_reused",
                )
            return record.instance, False
    name, instance_type, region, image, keys, volumes = _resolve(organization, request)
    if Instance.objects.filter(
        organization=organization, name=name, state__in=[s.value for s in LIVE]
    ).exists():
        raise Conflict(
            f"An instance named '{name}' already exists.", code="name_taken", details={"name": name}
        )
    _check_quota(organization, instance_type)
    _run_launch_checks(
        organization=organization, instance_type=instance_type, region=region, actor=actor
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
    instance.save(update_fields=["allocation", "host"])
    for volume in volumes:
        volume.state, volume.instance = VolumeState.IN_USE, instance
        volume.save(update_fields=["state", "instance"])
    if request.new_volume_gb:
        Volume.objects.create(
            organization=organization,
            region=region,
            name=f"{name}-data",
            size_gb=request.new_volume_gb,
            state=VolumeState.IN_USE,
            instance=instance,
        )
    _event(
        instance,
        actor=actor.label,
        reason="Launch requested",
        to_state=State.PENDING,
        detail={"host": allocation.host.name, "gpu_slots": allocation.gpu_slots},  # operators only
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
    _dispatch(instance)
    return instance, True


# --- customer actions -------------------------------------------------------------------------


def instance_action(*, actor: Actor, instance_id: int, action: str) -> Instance:
    """Start, stop, reboot or terminate. Starting places the instance again and may be refused
    with ``capacity_unavailable``, which leaves it stopped and says so in its events."""
    try:
        return _action(actor=actor, instance_id=instance_id, action=action)
    except capacity.CapacityUnavailable as exc:
        with transaction.atomic():
            instance = Instance.objects.get(pk=instance_id)
            _event(
                instance,
                actor=actor.label,
                reason=f"Start refused: {exc.message}",
                detail=exc.details,
            )
        raise


@transaction.atomic
def _action(*, actor: Actor, instance_id: int, action: str) -> Instance:
    if action not in Action.values:
        raise InvalidInput(
            f"Unknown action '{action}'; use one of {', '.join(Action.values)}.", code="invalid"
        )
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    # The organisation's lock (held from here) is taken by every write to its instances, so
    # this read stays true; hosts are locked before the instance (the house lock order).
    current = (
        Instance.objects.select_related("instance_type__mig_profile", "region")
        .filter(organization=actor.organization, pk=instance_id)
        .first()
    )
    if current is None:
        raise NotFound("No such instance in this organisation.")
    target = action_target(current.state, action)
    allocation = None
    if action == Action.START:
        _run_launch_checks(
            path_setting="COMPUTE_START_CHECKS", organization=actor.organization, instance=current
        )
        _check_quota(actor.organization, current.instance_type, exclude=current)
        allocation = capacity.allocation_reserve(
            instance_type=current.instance_type,
            region=current.region,
            holder=f"instance:{current.pk}",
        )
    instance = _locked(instance_id, actor.organization)
    if allocation is not None:
        instance.allocation, instance.host_id = allocation, allocation.host_id
        instance.save(update_fields=["allocation", "host"])
    instance.desired_state = {
        Action.START: DesiredState.RUNNING,
        Action.REBOOT: DesiredState.RUNNING,
        Action.STOP: DesiredState.STOPPED,
        Action.TERMINATE: DesiredState.TERMINATED,
    }[Action(action)]
    instance.save(update_fields=["desired_state"])
    _transition(instance, target, actor=actor.label, reason=f"{Action(action).label} requested")
    audit_record(actor=actor, action=f"instance.{action}", target=instance)
    _dispatch(instance)
    return instance


@transaction.atomic
def instance_rename(*, actor: Actor, instance_id: int, name: str) -> Instance:
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    instance = _locked(instance_id, actor.organization)
    name = (name or "").strip().lower()
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            "Use 1 to 63 lowercase letters, digits and hyphens.",
            code="invalid",
            details={"name": "Use 1 to 63 lowercase letters, digits and hyphens."},
        )
    if instance.name != name:
        taken = Instance.objects.filter(
            organization=actor.organization, name=name, state__in=[s.value for s in LIVE]
        ).exclude(pk=instance.pk)
        if taken.exists():
            raise Conflict(f"An instance named '{name}' already exists.", code="name_taken")
        previous, instance.name = instance.name, name
        instance.save(update_fields=["name"])
        _event(instance, actor=actor.label, reason=f"Renamed from {previous}")
        audit_record(
            actor=actor, action="instance.rename", target=instance, details={"from": previous}
        )
    return instance


# --- volumes ----------------------------------------------------------------------------------


@transaction.atomic
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
        raise InvalidInput("The volume is not valid; see details.", code="invalid", details=errors)
    if (
        Volume.objects.filter(organization=actor.organization, name=name)
        .exclude(state=VolumeState.DELETED)
        .exists()
    ):
        raise Conflict(f"A volume named '{name}' already exists.", code="name_taken")
    volume = Volume.objects.create(
        organization=actor.organization, region=region_obj, name=name, size_gb=size_gb
    )
    audit_record(actor=actor, action="volume.create", target=volume, details={"size_gb": size_gb})
    return volume


@transaction.atomic
def volume_delete(*, actor: Actor, volume_id: int) -> None:
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    volume = (
        Volume.objects.select_for_update()
        .filter(organization=actor.organization, pk=volume_id)
        .exclude(state=VolumeState.DELETED)
        .first()
    )
    if volume is None:
        raise NotFound("No such volume in this organisation.")
    if volume.state == VolumeState.IN_USE:
        raise Conflict(
            f"Volume {volume.name} is attached to {volume.instance.name}; terminate that instance first.",
            code="volume_in_use",
        )
    volume.state, volume.deleted_at = VolumeState.DELETED, timezone.now()
    volume.save(update_fields=["state", "deleted_at"])
    audit_record(actor=actor, action="volume.delete", target=volume)


def _detach_volumes(instance: Instance) -> None:
    now = timezone.now()
    for volume in Volume.objects.select_for_update().filter(
        instance=instance, state=VolumeState.IN_USE
    ):
        if volume.delete_on_termination:
            volume.state, volume.deleted_at = VolumeState.DELETED, now
        else:
            volume.state = VolumeState.AVAILABLE
        volume.instance = None
        volume.save(update_fields=["state", "deleted_at", "instance"])


# --- sync with the backend --------------------------------------------------------------------

SYSTEM = "system"


def _record_observation(instance: Instance, status: MachineStatus) -> None:
    instance.observed_state = status.state
    instance.observed_at = timezone.now()
    fields = ["observed_state", "observed_at"]
    if status.ip_addresses:
        instance.ip_address = status.ip_addresses[0]
        fields.append("ip_address")
    instance.save(update_fields=fields)


def _fail(instance: Instance, reason: str, detail=None) -> None:
    _release(instance)
    _detach_volumes(instance)
    _transition(instance, State.FAILED, actor=SYSTEM, reason=reason, detail=detail)


def _apply(instance_id: int, expected: str, outcome) -> bool:
    """Apply a backend result if the instance is still in the state we acted for.

    ``outcome`` is a MachineStatus or a BackendError. Returns whether to poll again.
    """
    with transaction.atomic():
        instance = _locked(instance_id)
        if instance.state != expected:
            return (
                instance.state in TRANSITIONAL
            )  # someone moved it meanwhile: follow the new state
        if isinstance(outcome, CapacityError):
            if expected == State.STARTING:
                _release(instance)
                _transition(
                    instance,
                    State.STOPPED,
                    actor=SYSTEM,
                    reason="The host could not take it back; it stays stopped. Start it again later.",
                    detail={"backend_error": str(outcome)},
                )
            else:
                _fail(
                    instance,
                    "The host had no room for it after all; nothing is billed.",
                    detail={"backend_error": str(outcome)},
                )
            return False
        if isinstance(outcome, PermanentBackendError):
            if expected in (State.PROVISIONING, State.STARTING):
                verb = "started" if expected == State.STARTING else "created"
                _fail(
                    instance,
                    f"The machine could not be {verb}; nothing is billed.",
                    detail={"backend_error": str(outcome)},
                )
            else:
                _event(
                    instance,
                    actor=SYSTEM,
                    reason="The backend reported an error; operators have been told.",
                    detail={"backend_error": str(outcome)},
                )
            return False
        status: MachineStatus = outcome
        _record_observation(instance, status)
        observed = status.state
        if observed == ObservedState.ERROR and expected in (State.PROVISIONING, State.STARTING):
            _fail(instance, "The machine failed to boot.", detail=status.detail)
            return False
        if observed == ObservedState.MISSING and expected in (
            State.STOPPING,
            State.REBOOTING,
            State.STARTING,
        ):
            # the machine is gone: nothing to stop, reboot or start; give everything back
            _force_terminated(instance, "The backend no longer has this machine.")
            return False
        if observed == ObservedState.ERROR and expected == State.STOPPING:
            _release(instance)
            instance.ip_address, instance.running_since = None, None
            instance.save(update_fields=["ip_address", "running_since"])
            _transition(
                instance,
                State.STOPPED,
                actor=SYSTEM,
                reason="The machine failed while stopping; it is off.",
            )
            return False
        if observed == ObservedState.ERROR and expected == State.REBOOTING:
            _fail(
                instance, "The machine failed to come back from the reboot.", detail=status.detail
            )
            return False
        done = {
            State.PROVISIONING: ObservedState.RUNNING,
            State.STARTING: ObservedState.RUNNING,
            State.REBOOTING: ObservedState.RUNNING,
            State.STOPPING: ObservedState.STOPPED,
            State.TERMINATING: ObservedState.TERMINATED,
        }[State(expected)]
        if observed == done or (
            expected == State.TERMINATING and observed == ObservedState.MISSING
        ):
            target = {
                State.PROVISIONING: State.RUNNING,
                State.STARTING: State.RUNNING,
                State.REBOOTING: State.RUNNING,
                State.STOPPING: State.STOPPED,
                State.TERMINATING: State.TERMINATED,
            }[State(expected)]
            if target == State.RUNNING and expected != State.REBOOTING:
                instance.running_since = timezone.now()  # the current running period starts
                instance.save(update_fields=["running_since"])
            if target in (State.STOPPED, State.TERMINATED):
                _release(instance)
                instance.ip_address, instance.running_since = None, None
                instance.save(update_fields=["ip_address", "running_since"])
            if target == State.TERMINATED:
                _detach_volumes(instance)
                instance.terminated_at = timezone.now()
                instance.save(update_fields=["terminated_at"])
            _transition(
                instance,
                target,
                actor=SYSTEM,
                reason={
                    State.RUNNING: "The machine is running",
                    State.STOPPED: "The machine stopped; its GPUs are released",
                    State.TERMINATED: "The machine is gone",
                }[target],
                detail={"backend": instance.backend, "ip": instance.ip_address, **status.detail},
            )
            return False
        return True


def instance_sync(*, instance_id: int) -> bool:
    """One step towards the desired state. Returns whether the instance still needs polling.

    Backend calls happen outside any lock; their result is applied only if the instance is
    still in the state the call was made for. Every backend call is idempotent, so running
    this twice (a redelivered task, a re-dispatch) is harmless.
    """
    instance = (
        Instance.objects.select_related("instance_type__mig_profile", "host", "allocation", "image")
        .filter(pk=instance_id)
        .first()
    )
    if instance is None or instance.state not in TRANSITIONAL:
        return False
    if instance.state == State.PENDING:
        with transaction.atomic():
            locked = _locked(instance_id)
            if locked.state != State.PENDING:  # terminated meanwhile, or another sync got here
                return locked.state in TRANSITIONAL
            _transition(locked, State.PROVISIONING, actor=SYSTEM, reason="Provisioning started")
        instance.state = State.PROVISIONING
    backend = get_backend(instance.backend)
    state = instance.state
    try:
        if state == State.PROVISIONING:
            outcome = backend.create(_spec(instance))
        elif state == State.STARTING:
            outcome = backend.start(_spec(instance))
        elif state == State.STOPPING:
            outcome = backend.stop(instance.machine_id)
        elif state == State.REBOOTING:
            outcome = backend.describe(instance.machine_id)
            if (
                outcome.state == ObservedState.RUNNING
                and instance.observed_state != ObservedState.REBOOTING
            ):
                outcome = backend.reboot(instance.machine_id)
        elif state == State.TERMINATING:
            outcome = backend.terminate(instance.machine_id)
        else:
            return False
    except (CapacityError, PermanentBackendError) as exc:
        outcome = exc
    except TransientBackendError:
        raise  # the task retries with backoff
    return _apply(instance_id, state, outcome)


# --- reconciler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileReport:
    redispatched: tuple[int, ...]
    timed_out: tuple[int, ...]
    gone: tuple[int, ...]
    orphans: tuple[str, ...]


def _force_terminated(instance: Instance, reason: str, actor: str = SYSTEM) -> None:
    _release(instance)
    _detach_volumes(instance)
    instance.ip_address, instance.running_since, instance.terminated_at = None, None, timezone.now()
    instance.save(update_fields=["ip_address", "running_since", "terminated_at"])
    _transition(instance, State.TERMINATED, actor=actor, reason=reason)


def reconcile() -> ReconcileReport:
    """The periodic sweep (every minute) that leaves nothing stuck.

    1. Work whose enqueue was lost (a transitional instance not dispatched for
       ``COMPUTE_REDISPATCH_SECONDS``) is dispatched again.
    2. Launches and starts stuck past ``COMPUTE_LAUNCH_TIMEOUT_SECONDS`` fail; their machine is
       terminated (best effort) and their capacity released.
    3. Running or stopped instances whose machine the backend no longer has are terminated.
    4. Machines the backend runs that no live instance accounts for are recorded as orphans
       (``BackendOrphan``, shown in admin) for operators to look at.
    """
    now = timezone.now()
    redispatch_before = now - timedelta(seconds=settings.COMPUTE_REDISPATCH_SECONDS)
    timeout_before = now - timedelta(seconds=settings.COMPUTE_LAUNCH_TIMEOUT_SECONDS)
    timed_out, redispatched, gone, orphans = [], [], [], []

    stuck = Instance.objects.filter(
        state__in=[s.value for s in TRANSITIONAL - {State.TERMINATING}],
        state_changed_at__lt=timeout_before,
    ).values_list("pk", flat=True)
    minutes = settings.COMPUTE_LAUNCH_TIMEOUT_SECONDS // 60
    for instance_id in stuck:
        cleanup = None
        with transaction.atomic():
            instance = _locked(instance_id)  # re-checked under the lock: it may have moved on
            state = instance.state
            if state == State.STARTING:
                # a stopped instance that would not start: it goes back to stopped, disk kept
                _release(instance)
                _transition(
                    instance,
                    State.STOPPED,
                    actor=SYSTEM,
                    reason=f"Start timed out after {minutes} minutes; it stays stopped.",
                )
                cleanup = "stop"
            elif state in (State.PENDING, State.PROVISIONING, State.STOPPING, State.REBOOTING):
                _fail(instance, f"Timed out after {minutes} minutes in {state}; capacity released.")
                cleanup = "terminate"
            else:
                continue
            timed_out.append(instance_id)
            backend_alias, machine_id = instance.backend, instance.machine_id

            def clean(alias=backend_alias, machine=machine_id, how=cleanup, pk=instance_id):
                try:
                    backend = get_backend(alias)
                    backend.stop(machine) if how == "stop" else backend.terminate(machine)
                except Exception:  # best effort: the orphan sweep reports what is left
                    logger.warning(
                        "could not %s timed-out machine %s",
                        how,
                        machine,
                        exc_info=True,
                        extra={"instance_id": pk},
                    )

            transaction.on_commit(clean)

    lost = Instance.objects.filter(state__in=[s.value for s in TRANSITIONAL]).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=redispatch_before)
    )
    for instance_id in lost.values_list("pk", flat=True):
        with transaction.atomic():
            instance = _locked(instance_id)
            if instance.state in TRANSITIONAL:
                _dispatch(instance)
                redispatched.append(instance_id)

    live = Instance.objects.filter(state__in=[s.value for s in LIVE | {State.TERMINATING}])
    by_backend: dict[str, dict[str, tuple[int, str]]] = {}
    for instance_id, backend_alias, state in live.values_list("pk", "backend", "state"):
        by_backend.setdefault(backend_alias, {})[f"inst-{instance_id}"] = (instance_id, state)
    for backend_alias in set(by_backend) | {settings.PROVISIONING_BACKEND}:
        known = by_backend.get(backend_alias, {})
        try:
            machines = {m.machine_id: m for m in get_backend(backend_alias).list_machines()}
        except Exception:
            logger.warning("could not list machines of backend %s", backend_alias, exc_info=True)
            continue
        for machine_id, (instance_id, state) in known.items():
            machine = machines.get(machine_id)
            if (
                state == State.RUNNING
                and machine is not None
                and machine.state in (ObservedState.ERROR, ObservedState.STOPPED)
            ):
                with transaction.atomic():
                    instance = _locked(instance_id)
                    if instance.state == State.RUNNING:
                        _record_observation(instance, machine)
                        _fail(
                            instance,
                            f"The machine is {machine.state} outside the portal; its GPUs are released.",
                        )
                        gone.append(instance_id)
                continue
            if state in (State.RUNNING, State.STOPPED) and machine_id not in machines:
                with transaction.atomic():
                    instance = _locked(instance_id)
                    if instance.state in (State.RUNNING, State.STOPPED):
                        _force_terminated(instance, "The backend no longer has this machine.")
                        gone.append(instance_id)
        seen_orphans = []
        for machine_id, machine in machines.items():
            if machine_id not in known:
                orphan, created = BackendOrphan.objects.get_or_create(
                    backend=backend_alias,
                    machine_id=machine_id,
                    defaults={"state": machine.state, "detail": {"host": machine.host_name}},
                )
                if not created:
                    orphan.state, orphan.last_seen = machine.state, now
                    orphan.save(update_fields=["state", "last_seen"])
                seen_orphans.append(machine_id)
        BackendOrphan.objects.filter(backend=backend_alias).exclude(
            machine_id__in=seen_orphans
        ).delete()
        orphans.extend(seen_orphans)
    if timed_out or gone or orphans:
        logger.warning(
            "reconcile: timed out %s, gone %s, orphans %s",
            timed_out,
            gone,
            orphans,
            extra={"instance_ids": sorted({*timed_out, *gone})},
        )
    return ReconcileReport(tuple(redispatched), tuple(timed_out), tuple(gone), tuple(orphans))


# --- operator actions (admin) -----------------------------------------------------------------


def _operator_audit(instance: Instance, operator: str, action: str, details=None) -> None:
    """Operator actions show in the organisation's audit log too."""
    audit_record(
        actor=Actor(user=None, organization=instance.organization, role=None),
        action=action,
        target=instance,
        details={"operator": operator, **(details or {})},
    )


def operator_resync(*, instance_id: int, operator: str = "operator") -> None:
    """Ask the backend again: re-dispatch a moving instance, refresh a settled one's observation."""
    with transaction.atomic():
        instance = _locked(instance_id)
        _event(instance, actor=operator, reason="Re-sync requested by an operator")
        _operator_audit(instance, operator, "instance.operator_resync")
        if instance.state in TRANSITIONAL:
            _dispatch(instance)
            return
    status = get_backend(instance.backend).describe(instance.machine_id)
    with transaction.atomic():
        instance = _locked(instance_id)
        _record_observation(instance, status)


def operator_force_terminate(*, instance_id: int, operator: str) -> None:
    """Terminate now, whatever the state: backend terminate (best effort), release, record."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None:
        raise NotFound("No such instance.")
    try:
        get_backend(instance.backend).terminate(instance.machine_id)
    except Exception as exc:  # recorded; the orphan sweep shows a machine left behind
        detail = {"backend_error": str(exc)}
    else:
        detail = {}
    with transaction.atomic():
        instance = _locked(instance_id)
        if instance.state not in (State.TERMINATED, State.FAILED):
            _force_terminated(instance, "Force-terminated by an operator", actor=operator)
            _operator_audit(instance, operator, "instance.operator_force_terminate", detail)
            if detail:
                _event(instance, actor=operator, reason="Backend terminate failed", detail=detail)


def operator_mark_failed(*, instance_id: int, operator: str, reason: str = "") -> None:
    with transaction.atomic():
        instance = _locked(instance_id)
        if instance.state not in (State.TERMINATED, State.FAILED):
            _release(instance)
            _detach_volumes(instance)
            _transition(
                instance,
                State.FAILED,
                actor=operator,
                reason=reason or "Marked failed by an operator",
            )
            _operator_audit(instance, operator, "instance.operator_mark_failed", {"reason": reason})
