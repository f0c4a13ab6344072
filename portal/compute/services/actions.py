"""What customers do with an instance: start, stop, reboot, terminate, rename.

``instance_action`` is the outermost transaction wherever it is called: from pages and the API,
and from billing's spend watch (``billing.spend.instances_stop_for_credit``), which calls it
once per instance outside any transaction of its own.
"""

from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.catalog.models import InstanceType
from portal.catalog.types import CpuShape
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import LIVE, Action, action_target, allowed_actions
from portal.compute.models import DesiredState, Instance
from portal.compute.services._checks import check_quota, run_launch_checks
from portal.compute.services._common import (
    NAME_PATTERN,
    dispatch,
    locked_instance,
    record_event,
    transition,
)
from portal.errors import Conflict, InvalidInput, NotFound
from portal.provisioning import InvalidBackendError, get_backend


def instance_action(*, actor: Actor, instance_id: int, action: str, gpus: bool = True) -> Instance:
    """Start, stop, reboot or terminate. Starting places the instance again and may be refused
    with ``capacity_unavailable``, which leaves it stopped and says so in its events.

    ``gpus=False`` (a start only): start it in no-GPU mode, on a CPU-only shape
    (``no_gpu_shape``) with no GPU, billed at the region's no-GPU price; refused with
    ``no_gpu_mode_unavailable`` where no such price is set. The GPU quota is not used."""
    try:
        return _action(actor=actor, instance_id=instance_id, action=action, gpus=gpus)
    except capacity.CapacityUnavailable as exc:
        with transaction.atomic(durable=True):
            instance = Instance.objects.get(pk=instance_id)
            record_event(
                instance,
                actor=actor.label,
                reason=f"Start refused: {exc.message}",
                detail=exc.details,
            )
        raise


# What an action's event records (stored in English; pages translate it when they show it).
REQUESTED = {
    Action.START: gettext_noop("Start requested"),
    Action.STOP: gettext_noop("Stop requested"),
    Action.REBOOT: gettext_noop("Reboot requested"),
    Action.TERMINATE: gettext_noop("Terminate requested"),
}
START_WITHOUT_GPUS = gettext_noop("Start without GPUs requested")


def no_gpu_shape(instance_type: InstanceType) -> CpuShape:
    """What an instance gets in no-GPU mode: ``COMPUTE_NO_GPU_VCPUS`` and
    ``COMPUTE_NO_GPU_RAM_GIB``, at most its type's own vCPUs and RAM."""
    return CpuShape(
        vcpus=min(instance_type.vcpus, settings.COMPUTE_NO_GPU_VCPUS),
        ram_gib=min(instance_type.ram_gib, settings.COMPUTE_NO_GPU_RAM_GIB),
    )


def no_gpu_price(organization, instance: Instance) -> Decimal | None:
    """The no-GPU price per hour now in the instance's region and the organisation's currency,
    as ``COMPUTE_NO_GPU_PRICE`` (metering's meter prices) says; None: not offered there."""
    lookup = import_string(settings.COMPUTE_NO_GPU_PRICE)
    return lookup(region_id=instance.region_id, currency=organization.currency)


def _no_gpu_price(organization, instance: Instance) -> Decimal:
    """The no-GPU price per hour now in the instance's region, or ``no_gpu_mode_unavailable``."""
    price = no_gpu_price(organization, instance)
    if price is None:
        raise Conflict(
            _(
                "Starting without GPUs is not offered in %(region)s in %(currency)s. "
                "Start it with its GPUs."
            )
            % {"region": instance.region.code, "currency": organization.currency},
            code=ComputeErrorCode.NO_GPU_MODE_UNAVAILABLE,
            details={"region": instance.region.code, "currency": organization.currency},
        )
    return price


# What a customer reads when the instance's engine cannot do the action (a Slurm allocation:
# its GPUs go back to the cluster when it ends, and their state with them).
UNSUPPORTED = {
    Action.START: gettext_lazy(
        "This instance cannot be started again: it is an allocation on a cluster, which gives "
        "its GPUs back when it ends. Launch a new instance instead."
    ),
    Action.STOP: gettext_lazy(
        "This instance cannot be stopped: it is an allocation on a cluster, which cannot keep "
        "its GPUs' state while they are given back. Terminate it when you no longer need it."
    ),
    Action.REBOOT: gettext_lazy(
        "This instance cannot be rebooted: it is an allocation on a cluster, not a virtual "
        "machine. Terminate it and launch a new one if it is stuck."
    ),
}


def _unsupported_actions(alias: str) -> frozenset[str]:
    try:
        return get_backend(alias).unsupported_actions
    except InvalidBackendError:  # an alias no longer configured: the sync reports it
        return frozenset()


def actions_offered(state: str, backend: str) -> list[str]:
    """What a customer may ask of an instance in ``state`` on ``backend``: the lifecycle's
    actions, less what the engine cannot do (a Slurm allocation is not stopped or started).
    Pages show these buttons and the API lists these ``actions``."""
    unsupported = _unsupported_actions(backend)
    return [action for action in allowed_actions(state) if action not in unsupported]


@transaction.atomic(durable=True)
def _action(*, actor: Actor, instance_id: int, action: str, gpus: bool = True) -> Instance:
    return action_in_transaction(actor=actor, instance_id=instance_id, action=action, gpus=gpus)


def action_in_transaction(
    *,
    actor: Actor,
    instance_id: int,
    action: str,
    reason: str | None = None,
    detail: dict | None = None,
    gpus: bool = True,
) -> Instance:
    """The statements of an action, inside the caller's transaction (``_action``'s, or the idle
    watch's, which stops an instance with its own ``reason``: English, translated when shown).
    ``gpus=False``: a start without GPUs (no-GPU mode)."""
    if action not in Action.values:
        raise InvalidInput(
            _("Unknown action '%(action)s'; use one of %(actions)s.")
            % {"action": action, "actions": ", ".join(Action.values)},
            code=ComputeErrorCode.INVALID,
        )
    if not gpus and action != Action.START:
        raise InvalidInput(
            _("Only a start can be without GPUs."),
            code=ComputeErrorCode.INVALID,
            details={"gpus": "Only a start can be without GPUs."},
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
        raise NotFound(_("No such instance in this organisation."))
    if current.cluster_id is not None:
        raise Conflict(
            _("This instance is a node of cluster %(cluster)s: terminate the cluster instead.")
            % {"cluster": current.cluster_id},
            code=ComputeErrorCode.CLUSTER_MEMBER,
            details={"action": action, "cluster": current.cluster_id},
        )
    if action in _unsupported_actions(current.backend):
        raise Conflict(
            UNSUPPORTED[Action(action)],
            code=ComputeErrorCode.ACTION_UNSUPPORTED,
            details={"action": action, "backend": current.backend},
        )
    target = action_target(current.state, action)
    allocation = None
    if action == Action.START:
        hourly = None if gpus else _no_gpu_price(actor.organization, current)
        run_launch_checks(
            path_setting="COMPUTE_START_CHECKS",
            organization=actor.organization,
            instance=current,
            gpus=gpus,
            hourly_price=hourly,
        )
        if gpus:  # no GPU, no GPU quota
            check_quota(actor.organization, current.instance_type, exclude=current)
        allocation = capacity.allocation_reserve(
            instance_type=current.instance_type,
            region=current.region,
            holder=f"instance:{current.pk}",
            cpu_only=None if gpus else no_gpu_shape(current.instance_type),
        )
    instance = locked_instance(instance_id, actor.organization)
    if allocation is not None:
        instance.allocation, instance.host_id = allocation, allocation.host_id
        instance.gpus = gpus  # each start says whether it has its GPUs
        instance.save(update_fields=["allocation", "host", "gpus"])
    instance.desired_state = {
        Action.START: DesiredState.RUNNING,
        Action.REBOOT: DesiredState.RUNNING,
        Action.STOP: DesiredState.STOPPED,
        Action.TERMINATE: DesiredState.TERMINATED,
    }[Action(action)]
    instance.save(update_fields=["desired_state"])
    if reason is None:
        reason = REQUESTED[Action(action)] if gpus else START_WITHOUT_GPUS
    transition(instance, target, actor=actor.label, reason=reason, detail=detail)
    audit_record(
        actor=actor,
        action=f"instance.{action}",
        target=instance,
        details=detail if gpus else {**(detail or {}), "gpus": False},
    )
    dispatch(instance)
    return instance


@transaction.atomic(durable=True)
def instance_rename(*, actor: Actor, instance_id: int, name: str) -> Instance:
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    instance = locked_instance(instance_id, actor.organization)
    name = (name or "").strip().lower()
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            _("Use 1 to 63 lowercase letters, digits and hyphens."),
            code=ComputeErrorCode.INVALID,
            details={"name": "Use 1 to 63 lowercase letters, digits and hyphens."},
        )
    if instance.name != name:
        taken = Instance.objects.filter(
            organization=actor.organization, name=name, state__in=[s.value for s in LIVE]
        ).exclude(pk=instance.pk)
        if taken.exists():
            raise Conflict(
                _("An instance named '%(name)s' already exists.") % {"name": name},
                code=ComputeErrorCode.NAME_TAKEN,
            )
        previous, instance.name = instance.name, name
        instance.save(update_fields=["name"])
        record_event(instance, actor=actor.label, reason=f"Renamed from {previous}")
        audit_record(
            actor=actor, action="instance.rename", target=instance, details={"from": previous}
        )
    return instance
