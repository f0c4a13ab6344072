"""Syncing an instance with its provisioning backend, one step at a time.

What to ask the backend in each state (``STEPS``) and what its answer means (``RULES``) are
declared in ``portal.compute.lifecycle``; this module only carries them out. Backend calls
happen outside any lock; their answer is applied under the lock, and only if the instance is
still in the state the call was made for.
"""

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from portal.catalog.models import Gpu
from portal.compute import stages
from portal.compute.lifecycle import (
    RULES,
    STEPS,
    TRANSITIONAL,
    BackendFailure,
    Command,
    Detail,
    Effect,
    State,
    Step,
)
from portal.compute.models import Instance
from portal.compute.services._common import (
    SYSTEM,
    detach_volumes,
    locked_instance,
    record_event,
    record_observation,
    release_capacity,
    transition,
)
from portal.provisioning import get_backend, phone_home
from portal.provisioning.base import (
    CapacityError,
    GpuDevice,
    MachineSpec,
    MachineStatus,
    ObservedState,
    PermanentBackendError,
    ProvisioningBackend,
    TransientBackendError,
)

BOOTING = gettext_noop("The host has the machine; it is booting")


def _spec(instance: Instance) -> MachineSpec:
    gpus = []
    if instance.allocation is not None:
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
        # what its allocation holds: the type's shape, or no-GPU mode's smaller one
        vcpus=instance.allocation.vcpus if instance.allocation else instance.instance_type.vcpus,
        ram_gib=(
            instance.allocation.ram_gib if instance.allocation else instance.instance_type.ram_gib
        ),
        disk_gb=instance.disk_gb,
        image=instance.image.name,
        gpus=tuple(gpus),
        ssh_public_keys=tuple(instance.ssh_public_keys),
        user_data=instance.user_data,
        ready_url=phone_home.url_for(instance.machine_id),
    )


def _ask(backend: ProvisioningBackend, instance: Instance, step: Step) -> MachineStatus:
    """The backend's answer for this step: the command once per attempt, then ``describe``."""
    if instance.observed_state in step.under_way:
        return backend.describe(instance.machine_id)
    if step.only_when is not None:
        status = backend.describe(instance.machine_id)
        if status.state != step.only_when:
            return status
    if step.command in (Command.CREATE, Command.START):
        return getattr(backend, step.command)(_spec(instance))
    return getattr(backend, step.command)(instance.machine_id)


def instance_sync(*, instance_id: int) -> bool:
    """One step towards the desired state. Returns whether the instance still needs polling.

    Every backend call is idempotent, so running this twice (a redelivered task, a re-dispatch)
    is harmless. A transient backend error propagates: the task retries with backoff.
    """
    instance = (
        Instance.objects.select_related("instance_type__mig_profile", "host", "allocation", "image")
        .filter(pk=instance_id)
        .first()
    )
    if instance is None or instance.state not in TRANSITIONAL:
        return False
    if instance.state == State.PENDING:
        with transaction.atomic(durable=True):
            locked = locked_instance(instance_id)
            if locked.state != State.PENDING:  # terminated meanwhile, or another sync got here
                return locked.state in TRANSITIONAL
            transition(
                locked,
                State.PROVISIONING,
                actor=SYSTEM,
                reason=gettext_noop("Provisioning started"),
            )
        instance.state = State.PROVISIONING
    state = State(instance.state)
    step = STEPS.get(state)
    if step is None:
        return False
    try:
        outcome: MachineStatus | CapacityError | PermanentBackendError = _ask(
            get_backend(instance.backend), instance, step
        )
    except (CapacityError, PermanentBackendError) as exc:
        outcome = exc
    except TransientBackendError:
        raise  # the task retries with backoff
    return _apply(instance_id, state, outcome)


def _apply(
    instance_id: int,
    expected: State,
    outcome: MachineStatus | CapacityError | PermanentBackendError,
) -> bool:
    """Apply the rule for (``expected``, the backend's answer) if the instance is still in the
    state we acted for. Returns whether to poll again (no rule: the step is still under way)."""
    with transaction.atomic(durable=True):
        instance = locked_instance(instance_id)
        if instance.state != expected:  # someone moved it meanwhile: follow the new state
            return instance.state in TRANSITIONAL
        if isinstance(outcome, MachineStatus):
            booting = (
                expected in (State.PROVISIONING, State.STARTING)
                and outcome.state == ObservedState.PROVISIONING
                and instance.observed_state != ObservedState.PROVISIONING
            )
            record_observation(instance, outcome)
            if booting:  # placing is over (portal.compute.stages)
                record_event(
                    instance,
                    actor=SYSTEM,
                    reason=BOOTING,
                    detail={"stage": stages.BOOTING, "host": outcome.host_name},
                )
            answer = outcome.state
        elif isinstance(outcome, CapacityError):
            answer = BackendFailure.CAPACITY
        else:
            answer = BackendFailure.PERMANENT
        rule = RULES.get((expected, answer))
        if rule is None:
            return True
        for effect in rule.effects:
            _EFFECTS[effect](instance)
        detail = _detail(rule.detail, instance, outcome)
        if rule.next_state is None:
            record_event(instance, actor=SYSTEM, reason=rule.reason, detail=detail)
        else:
            transition(instance, rule.next_state, actor=SYSTEM, reason=rule.reason, detail=detail)
        return False


def _clear_address(instance: Instance) -> None:
    instance.ip_address, instance.running_since = None, None
    instance.save(update_fields=["ip_address", "running_since"])


def _start_running_period(instance: Instance) -> None:
    instance.running_since = timezone.now()  # the current running period starts
    instance.save(update_fields=["running_since"])


def _mark_terminated(instance: Instance) -> None:
    instance.terminated_at = timezone.now()
    instance.save(update_fields=["terminated_at"])


_EFFECTS = {
    Effect.RELEASE_CAPACITY: release_capacity,
    Effect.DETACH_VOLUMES: detach_volumes,
    Effect.CLEAR_ADDRESS: _clear_address,
    Effect.START_RUNNING_PERIOD: _start_running_period,
    Effect.MARK_TERMINATED: _mark_terminated,
}


def _detail(kind: Detail, instance: Instance, outcome) -> dict | None:
    if kind == Detail.BACKEND_ERROR:
        return {"backend_error": str(outcome)}
    if kind == Detail.MACHINE:
        return outcome.detail
    if kind == Detail.REPORT:
        return {"backend": instance.backend, "ip": instance.ip_address, **outcome.detail}
    return None
