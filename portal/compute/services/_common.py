"""What every compute service shares: events, transitions, the lock order, dispatching the
sync task, and giving capacity and volumes back."""

import re
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from portal.accounts.locks import lock_organization
from portal.background import enqueue_on_commit
from portal.catalog import capacity
from portal.compute.lifecycle import (
    BILLED_RUNNING,
    COMPUTE_COMING,
    DISK_KEPT,
    State,
    check_transition,
)
from portal.compute.models import Instance, InstanceEvent, Volume, VolumeState
from portal.compute.types import FootprintChange
from portal.errors import NotFound
from portal.observability import metrics
from portal.provisioning.base import MachineStatus
from portal.sql import insert, update

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SYSTEM = "system"  # the actor label of what the portal does by itself


# --- What the organisation is billed for by the hour (settings.COMPUTE_FOOTPRINT_HOOKS) -------

_RUNNING_OR_COMING = BILLED_RUNNING | COMPUTE_COMING


def _footprint(state: str | None, disk_gb: int) -> tuple[int, int, int, int]:
    """(running, committed, billed GB, committed GB) of one instance in ``state`` (see
    ``FootprintChange``); nothing for no state (not launched yet) or a final one."""
    if state is None:
        return 0, 0, 0, 0
    running = int(state in BILLED_RUNNING)
    committed = int(state in _RUNNING_OR_COMING)
    billed_gb = disk_gb if state in DISK_KEPT else 0
    return running, committed, billed_gb, 0 if committed else billed_gb


def _announce(change: FootprintChange) -> None:
    for path in settings.COMPUTE_FOOTPRINT_HOOKS:
        import_string(path)(change)


def announce_instance(
    instance: Instance,
    before: str | None,
    after: str,
    *,
    at: datetime,
    hourly_price: Decimal | None = None,
) -> None:
    """Tell the footprint hooks what moving ``instance`` from ``before`` to ``after`` at ``at``
    changes in what its organisation is billed for (nothing when it changes nothing)."""
    old, new = _footprint(before, instance.disk_gb), _footprint(after, instance.disk_gb)
    running, committed, billed_gb, committed_gb = (n - o for n, o in zip(new, old, strict=True))
    if running or committed or billed_gb or committed_gb:
        _announce(
            FootprintChange(
                organization_id=instance.organization_id,
                at=at,
                instance_type_id=instance.instance_type_id,
                region_id=instance.region_id,
                running=running,
                committed=committed,
                billed_gb=billed_gb,
                committed_gb=committed_gb,
                hourly_price=hourly_price,
                gpus=instance.gpus,
            )
        )


def announce_volume(volume: Volume, *, stored: bool, at: datetime) -> None:
    """A volume is billed from the moment it is made (``stored``) until it is deleted."""
    size = volume.size_gb if stored else -volume.size_gb
    _announce(
        FootprintChange(
            organization_id=volume.organization_id, at=at, billed_gb=size, committed_gb=size
        )
    )


def record_event(
    instance: Instance,
    *,
    actor: str,
    reason: str,
    from_state: str = "",
    to_state: str = "",
    detail=None,
    at: datetime | None = None,
) -> InstanceEvent:
    event = InstanceEvent(
        instance=instance,
        created_at=at or timezone.now(),
        actor_label=actor[:200],
        reason=reason[:300],
        from_state=from_state,
        to_state=to_state,
        detail=detail or {},
    )
    insert(event)  # plain SQL: every launch and transition appends one
    return event


def transition(
    instance: Instance,
    target: State,
    *,
    actor: str,
    reason: str,
    detail=None,
    at: datetime | None = None,
) -> None:
    """Move a locked instance to ``target`` (if the lifecycle allows it) and record the event.
    The event of an instance in no-GPU mode says so (``"gpus": false``): metering bills its
    running time from the events, on the no-GPU meter."""
    check_transition(instance.state, target)
    if not instance.gpus:
        detail = {**(detail or {}), "gpus": False}
    previous = instance.state
    instance.state = target
    instance.state_changed_at = at or timezone.now()
    instance.status_message = reason[:300] if target == State.FAILED else ""
    _stopped_clock(instance, previous, target)
    instance.save(
        update_fields=["state", "state_changed_at", "status_message", "stopped_since", "release_at"]
    )
    event = record_event(
        instance,
        actor=actor,
        reason=reason,
        from_state=previous,
        to_state=target,
        detail=detail,
        at=at,
    )
    # at the event's moment: metering bills each state from its event
    announce_instance(instance, previous, target, at=event.created_at)
    metrics.instance_transitioned(instance, previous, target)


def _stopped_clock(instance: Instance, previous: str, target: str) -> None:
    """When a stopped instance is released (``portal.compute.services.release``).

    The clock starts when it stops after running. A start that does not get it running again
    (the host could not take it back, or the start timed out: starting → stopped) does not
    reset it, since the instance was never running in between; it only makes sure the release
    is not sooner than the last notice's lead from now, so a customer who tried to keep it at
    the last moment still has that long to try again. Once it runs (or ends), it has no
    release moment."""
    if target == State.STOPPED:
        now = instance.state_changed_at
        if previous != State.STARTING or instance.stopped_since is None:
            instance.stopped_since = now
            instance.release_at = now + settings.COMPUTE_RELEASE_STOPPED_AFTER
        else:
            last = min(settings.COMPUTE_RELEASE_NOTICES, default=timedelta(0))
            instance.release_at = max(instance.release_at or now, now + last)
    elif target != State.STARTING:
        instance.stopped_since = instance.release_at = None


def dispatch(instance: Instance, *, also: tuple[str, ...] | list[str] = ()) -> None:
    """Enqueue the sync task after commit and remember when (the reconciler re-sends lost work).
    ``also``: other fields of the instance to save in the same update."""
    from portal.compute.tasks import instance_sync

    instance.dispatched_at = timezone.now()
    update(instance, ["dispatched_at", *also])  # plain SQL: every launch and action dispatches
    enqueue_on_commit(instance_sync, instance.pk)


def mark_dispatched(*, instance_id: int) -> None:
    Instance.objects.filter(pk=instance_id).update(dispatched_at=timezone.now())


def locked_instance(instance_id: int, organization=None) -> Instance:
    """The instance, row-locked, after its organisation's lock (the house lock order:
    organisation, hosts, instance), so syncs and customer actions never deadlock.

    With ``organization`` the caller holds that organisation's lock already, and an instance of
    another organisation is not found."""
    org_id = (
        Instance.objects.filter(pk=instance_id).values_list("organization_id", flat=True).first()
    )
    if org_id is None or (organization is not None and org_id != organization.pk):
        raise NotFound(_("No such instance in this organisation."))
    if organization is None:
        lock_organization(org_id)
    return (
        Instance.objects.select_for_update(of=("self",))
        .select_related(
            "instance_type__mig_profile", "instance_type__gpu_model", "region", "allocation", "host"
        )
        .get(pk=instance_id)
    )


def release_capacity(instance: Instance) -> None:
    if instance.allocation_id is not None:
        capacity.allocation_release(allocation=instance.allocation)
        instance.allocation = None
        instance.host = None
        instance.save(update_fields=["allocation", "host"])


def detach_volumes(instance: Instance) -> None:
    now = timezone.now()
    for volume in Volume.objects.select_for_update().filter(
        instance=instance, state=VolumeState.IN_USE
    ):
        if volume.delete_on_termination:
            volume.state, volume.deleted_at = VolumeState.DELETED, now
            announce_volume(volume, stored=False, at=now)
        else:
            volume.state = VolumeState.AVAILABLE
        volume.instance = None
        volume.save(update_fields=["state", "deleted_at", "instance"])


def record_observation(instance: Instance, status: MachineStatus) -> None:
    instance.observed_state = status.state
    instance.observed_at = timezone.now()
    fields = ["observed_state", "observed_at"]
    if ssh := status.detail.get("ssh"):  # the backend says where to log in
        instance.ip_address, instance.ssh_port = ssh["host"], ssh["port"]
        instance.ssh_user = ssh.get("user", "")
        fields += ["ip_address", "ssh_port", "ssh_user"]
    elif status.ip_addresses:
        instance.ip_address = status.ip_addresses[0]
        fields.append("ip_address")
    instance.save(update_fields=fields)


def fail(instance: Instance, reason: str, detail=None, actor: str = SYSTEM) -> None:
    """Failed: its GPUs go back and its volumes are detached."""
    release_capacity(instance)
    detach_volumes(instance)
    transition(instance, State.FAILED, actor=actor, reason=reason, detail=detail)


def force_terminated(instance: Instance, reason: str, actor: str = SYSTEM) -> None:
    """Terminated without asking the backend (it lost the machine, or an operator said so)."""
    release_capacity(instance)
    detach_volumes(instance)
    instance.ip_address, instance.running_since, instance.terminated_at = None, None, timezone.now()
    instance.save(update_fields=["ip_address", "running_since", "terminated_at"])
    transition(instance, State.TERMINATED, actor=actor, reason=reason)
