"""What customers do with an instance: start, stop, reboot, terminate, rename.

``instance_action`` is the outermost transaction wherever it is called: from pages and the API,
and from billing's spend watch (``billing.spend.instances_stop_for_credit``), which calls it
once per instance outside any transaction of its own.
"""

from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import LIVE, Action, action_target
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


def instance_action(*, actor: Actor, instance_id: int, action: str) -> Instance:
    """Start, stop, reboot or terminate. Starting places the instance again and may be refused
    with ``capacity_unavailable``, which leaves it stopped and says so in its events."""
    try:
        return _action(actor=actor, instance_id=instance_id, action=action)
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


@transaction.atomic(durable=True)
def _action(*, actor: Actor, instance_id: int, action: str) -> Instance:
    if action not in Action.values:
        raise InvalidInput(
            _("Unknown action '%(action)s'; use one of %(actions)s.")
            % {"action": action, "actions": ", ".join(Action.values)},
            code=ComputeErrorCode.INVALID,
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
    if action in _unsupported_actions(current.backend):
        raise Conflict(
            UNSUPPORTED[Action(action)],
            code=ComputeErrorCode.ACTION_UNSUPPORTED,
            details={"action": action, "backend": current.backend},
        )
    target = action_target(current.state, action)
    allocation = None
    if action == Action.START:
        run_launch_checks(
            path_setting="COMPUTE_START_CHECKS", organization=actor.organization, instance=current
        )
        check_quota(actor.organization, current.instance_type, exclude=current)
        allocation = capacity.allocation_reserve(
            instance_type=current.instance_type,
            region=current.region,
            holder=f"instance:{current.pk}",
        )
    instance = locked_instance(instance_id, actor.organization)
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
    transition(instance, target, actor=actor.label, reason=REQUESTED[Action(action)])
    audit_record(actor=actor, action=f"instance.{action}", target=instance)
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
