"""The periodic sweep (``compute.reconcile``, every minute) that leaves nothing stuck."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from portal.compute.lifecycle import LIVE, TRANSITIONAL, State
from portal.compute.models import BackendOrphan, Instance
from portal.compute.services._common import (
    SYSTEM,
    dispatch,
    fail,
    force_terminated,
    locked_instance,
    record_observation,
    release_capacity,
    transition,
)
from portal.provisioning import get_backend
from portal.provisioning.base import ObservedState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    redispatched: tuple[int, ...]
    timed_out: tuple[int, ...]
    gone: tuple[int, ...]
    orphans: tuple[str, ...]


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
        with transaction.atomic(durable=True):
            instance = locked_instance(
                instance_id
            )  # re-checked under the lock: it may have moved on
            state = instance.state
            if state == State.STARTING:
                # a stopped instance that would not start: it goes back to stopped, disk kept
                release_capacity(instance)
                transition(
                    instance,
                    State.STOPPED,
                    actor=SYSTEM,
                    reason=f"Start timed out after {minutes} minutes; it stays stopped.",
                )
                cleanup = "stop"
            elif state in (State.PENDING, State.PROVISIONING, State.STOPPING, State.REBOOTING):
                fail(instance, f"Timed out after {minutes} minutes in {state}; capacity released.")
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
        with transaction.atomic(durable=True):
            instance = locked_instance(instance_id)
            if instance.state in TRANSITIONAL:
                dispatch(instance)
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
                with transaction.atomic(durable=True):
                    instance = locked_instance(instance_id)
                    if instance.state == State.RUNNING:
                        record_observation(instance, machine)
                        fail(
                            instance,
                            f"The machine is {machine.state} outside the portal; its GPUs are released.",
                        )
                        gone.append(instance_id)
                continue
            if state in (State.RUNNING, State.STOPPED) and machine_id not in machines:
                with transaction.atomic(durable=True):
                    instance = locked_instance(instance_id)
                    if instance.state in (State.RUNNING, State.STOPPED):
                        force_terminated(instance, "The backend no longer has this machine.")
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
