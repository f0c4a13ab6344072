"""Backends that run no machines: the simulated default and an in-memory test double.

``SimulatedBackend`` (the embedded default) keeps its machines in the database
(``SimulatedMachine``), so they survive worker restarts and every worker sees the same ones. It
takes realistic time: ``create`` and ``start`` boot for ``boot_seconds`` (state
``provisioning``), ``stop`` takes ``stop_seconds`` (``stopping``), ``reboot`` takes
``boot_seconds`` (``rebooting``). Nothing runs in the background: every call first settles the
transitions whose time has come (``django.utils.timezone.now()``, so tests move time with
time-machine), under a row lock, so concurrent calls for one machine are safe. Each machine gets
an address from ``ip_network`` (the network's first host is kept for the gateway), unique among
machines that are not terminated, and kept while stopped; terminate frees it.

``InMemoryBackend`` is for fast unit tests elsewhere: no database, transitions complete at once,
every call is recorded in ``backend.calls``; ``fail_next()`` queues any error for any method.

Failure injection, for tests and demos: put one of these in the spec's ``name`` or
``user_data`` (case-insensitive). Both backends honour them.

- ``sim-transient-N``: ``create`` raises ``TransientBackendError`` on its first N calls for the
  machine id, then succeeds (the count is kept in the database);
- ``sim-capacity``: ``create`` raises ``CapacityError``;
- ``sim-permanent``: ``create`` raises ``PermanentBackendError``;
- ``sim-hang``: boots forever, ``create`` and ``start`` leave it ``provisioning``;
- ``sim-crash``: goes to ``error`` ``boot_seconds`` after it first reached ``running`` (the
  in-memory backend: at the first ``describe`` after ``create``). It crashes once; ``reboot``
  (or stop and start) brings it back.

And for a machine that exists: ``simulate_loss(machine_id)`` makes the simulated backend forget
it (``describe`` then says ``missing``); ``simulate_crash(machine_id)`` puts it in ``error`` now.

Rules shared by both backends (the reconciler and the tasks rely on them):

- ``provisioning`` means "booting", after ``create`` and after ``start`` alike;
- every call is idempotent: ``create`` of an existing id returns it as it is (also when it is
  terminated), ``stop`` of a stopped or stopping machine, ``start`` of a running or booting one,
  ``reboot`` of a rebooting one change nothing; ``terminate`` of a missing machine returns
  ``terminated``;
- ``stop``, ``start``, ``reboot`` and ``describe`` of an unknown machine return ``missing``; of
  a terminated one, ``terminated`` (nothing changes);
- ``start`` while the machine is still stopping raises ``TransientBackendError`` (try again);
  ``reboot`` of a stopped or stopping machine raises ``PermanentBackendError``; ``start`` of a
  machine in ``error`` raises ``PermanentBackendError`` (reboot it, or stop it first).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.provisioning.base import (
    BackendError,
    CapacityError,
    GpuDevice,
    MachineSpec,
    MachineStatus,
    ObservedState,
    PermanentBackendError,
    ProvisioningBackend,
    TransientBackendError,
)
from portal.provisioning.models import SimulatedCreateAttempt, SimulatedMachine

_TRANSIENT_RE = re.compile(r"sim-transient-(\d+)")
_INSERT_ATTEMPTS = 20  # inserts retried when another worker took the same address meanwhile
# The columns a transition changes (saves name them, as house style asks).
_CHANGING = [
    "state",
    "ip_address",
    "host_name",
    "gpus",
    "vcpus",
    "ram_gib",
    "transition_started_at",
    "transition_ready_at",
    "hang_on_boot",
    "crash_at",
    "updated_at",
]


@dataclass(frozen=True)
class FailurePlan:
    """What a spec's magic values ask the simulation to do."""

    transient_failures: int = 0
    capacity: bool = False
    permanent: bool = False
    hang: bool = False
    crash: bool = False

    @classmethod
    def from_spec(cls, spec: MachineSpec) -> FailurePlan:
        text = f"{spec.name}\n{spec.user_data}".lower()
        transient = _TRANSIENT_RE.search(text)
        return cls(
            transient_failures=int(transient.group(1)) if transient else 0,
            capacity="sim-capacity" in text,
            permanent="sim-permanent" in text,
            hang="sim-hang" in text,
            crash="sim-crash" in text,
        )

    def create_error(self, spec: MachineSpec) -> BackendError | None:
        """The error a ``create`` that gets past the transient failures raises, if any."""
        if self.capacity:
            return CapacityError(
                f"simulated: host {spec.host_name} has no room for {spec.machine_id}"
            )
        if self.permanent:
            return PermanentBackendError(f"simulated: {spec.machine_id} cannot be built")
        return None


def _gpus_to_json(gpus: tuple[GpuDevice, ...]) -> list[dict]:
    return [dataclasses.asdict(gpu) for gpu in gpus]


def _float_option(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"simulated backend option {name} must be a number, not {value!r}"
        ) from None
    if number < 0:
        raise ImproperlyConfigured(
            f"simulated backend option {name} must not be negative ({value!r})"
        )
    return number


class SimulatedBackend(ProvisioningBackend):
    """Machines in the database that take time to boot and stop (see the module docstring)."""

    def __init__(
        self,
        alias: str = "default",
        *,
        boot_seconds: float = 8,
        stop_seconds: float = 3,
        ip_network: str = "10.64.0.0/16",
    ) -> None:
        super().__init__(
            alias, boot_seconds=boot_seconds, stop_seconds=stop_seconds, ip_network=ip_network
        )
        self.boot_seconds = _float_option("boot_seconds", boot_seconds)
        self.stop_seconds = _float_option("stop_seconds", stop_seconds)
        try:
            self.ip_network = ipaddress.ip_network(ip_network)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"simulated backend option ip_network: {exc}") from None
        if self.ip_network.num_addresses < 4:
            raise ImproperlyConfigured(f"simulated backend ip_network {ip_network} is too small")

    # --- the interface ---------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> MachineStatus:
        plan = FailurePlan.from_spec(spec)
        error: BackendError | None = None
        with transaction.atomic():
            machine = self._locked(spec.machine_id)
            if machine is not None:
                return self._status(self._settle(machine))
            if (
                plan.transient_failures
                and self._count_attempt(spec.machine_id) <= plan.transient_failures
            ):
                error = TransientBackendError(
                    f"simulated: hypervisor on {spec.host_name} timed out creating {spec.machine_id}"
                )
            else:
                error = plan.create_error(spec)
        if error is not None:
            raise error  # after the commit, so the attempt count is kept
        for _ in range(_INSERT_ATTEMPTS):
            with transaction.atomic():
                machine = self._locked(spec.machine_id)
                if machine is not None:  # another worker created it meanwhile
                    return self._status(self._settle(machine))
                machine = self._insert(spec, plan)
                if machine is not None:
                    return self._status(machine)
            # lost a race, for this machine id (found next time round) or for the address
        raise TransientBackendError(
            f"simulated: could not allocate an address for {spec.machine_id}"
        )

    def start(self, spec: MachineSpec) -> MachineStatus:
        with transaction.atomic():
            machine = self._locked(spec.machine_id)
            if machine is None:
                return self._missing(spec.machine_id)
            machine = self._settle(machine)
            state = machine.state
            if state == ObservedState.STOPPING:
                raise TransientBackendError(f"simulated: {spec.machine_id} is still stopping")
            if state == ObservedState.ERROR:
                raise PermanentBackendError(
                    f"simulated: {spec.machine_id} is in error; reboot it or stop it first"
                )
            if state == ObservedState.STOPPED:
                # It may come back on another host with other GPUs.
                machine.host_name = spec.host_name
                machine.gpus = _gpus_to_json(spec.gpus)
                machine.vcpus, machine.ram_gib = spec.vcpus, spec.ram_gib
                machine.hang_on_boot = FailurePlan.from_spec(spec).hang or machine.hang_on_boot
                self._begin(
                    machine, ObservedState.PROVISIONING, self._boot_ready(machine.hang_on_boot)
                )
                machine.save(update_fields=_CHANGING)
            return self._status(machine)

    def stop(self, machine_id: str) -> MachineStatus:
        with transaction.atomic():
            machine = self._locked(machine_id)
            if machine is None:
                return self._missing(machine_id)
            machine = self._settle(machine)
            if machine.state in (
                ObservedState.PROVISIONING,
                ObservedState.RUNNING,
                ObservedState.REBOOTING,
                ObservedState.ERROR,
            ):
                machine.crash_at = None
                self._begin(machine, ObservedState.STOPPING, self._ready_in(self.stop_seconds))
                machine.save(update_fields=_CHANGING)
            return self._status(machine)

    def reboot(self, machine_id: str) -> MachineStatus:
        with transaction.atomic():
            machine = self._locked(machine_id)
            if machine is None:
                return self._missing(machine_id)
            machine = self._settle(machine)
            if machine.state in (ObservedState.STOPPED, ObservedState.STOPPING):
                raise PermanentBackendError(
                    f"simulated: {machine_id} is {machine.state}; start it instead of rebooting"
                )
            if machine.state in (ObservedState.RUNNING, ObservedState.ERROR):
                machine.crash_at = None
                self._begin(machine, ObservedState.REBOOTING, self._ready_in(self.boot_seconds))
                machine.save(update_fields=_CHANGING)
            return self._status(machine)

    def terminate(self, machine_id: str) -> MachineStatus:
        with transaction.atomic():
            machine = self._locked(machine_id)
            if machine is None:
                return MachineStatus(machine_id=machine_id, state=ObservedState.TERMINATED)
            if machine.state != ObservedState.TERMINATED:
                machine.ip_address = None
                machine.crash_at = None
                self._begin(machine, ObservedState.TERMINATED, None)
                machine.transition_started_at = None
                machine.save(update_fields=_CHANGING)
            return self._status(machine)

    def describe(self, machine_id: str) -> MachineStatus:
        with transaction.atomic():
            machine = self._locked(machine_id)
            if machine is None:
                return self._missing(machine_id)
            return self._status(self._settle(machine))

    def list_machines(self) -> list[MachineStatus]:
        with transaction.atomic():
            machines = (
                SimulatedMachine.objects.select_for_update()
                .exclude(state=ObservedState.TERMINATED)
                .order_by("machine_id")
            )
            return [self._status(self._settle(machine)) for machine in machines]

    # --- the simulation --------------------------------------------------------------------

    def _locked(self, machine_id: str) -> SimulatedMachine | None:
        return SimulatedMachine.objects.select_for_update().filter(machine_id=machine_id).first()

    def _count_attempt(self, machine_id: str) -> int:
        SimulatedCreateAttempt.objects.get_or_create(machine_id=machine_id)
        attempt = SimulatedCreateAttempt.objects.select_for_update().get(machine_id=machine_id)
        attempt.attempts += 1
        attempt.save(update_fields=["attempts", "updated_at"])
        return attempt.attempts

    def _insert(self, spec: MachineSpec, plan: FailurePlan) -> SimulatedMachine | None:
        """Insert the machine with a free address; None if another worker won a race."""
        machine = SimulatedMachine(
            machine_id=spec.machine_id,
            name=spec.name,
            host_name=spec.host_name,
            ip_address=self._free_address(),
            gpus=_gpus_to_json(spec.gpus),
            vcpus=spec.vcpus,
            ram_gib=spec.ram_gib,
            disk_gb=spec.disk_gb,
            image=spec.image,
            hang_on_boot=plan.hang,
        )
        self._begin(machine, ObservedState.PROVISIONING, self._boot_ready(plan.hang))
        if plan.crash and machine.transition_ready_at is not None:
            machine.crash_at = machine.transition_ready_at + timedelta(seconds=self.boot_seconds)
        try:
            with transaction.atomic():
                machine.save(force_insert=True)
        except IntegrityError:
            return None
        return machine

    def _free_address(self) -> str:
        used = set(
            SimulatedMachine.objects.filter(ip_address__isnull=False).values_list(
                "ip_address", flat=True
            )
        )
        # The network's first host is the gateway.
        for address in itertools.islice(self.ip_network.hosts(), 1, None):
            if str(address) not in used:
                return str(address)
        raise CapacityError(f"simulated: no free address left in {self.ip_network}")

    def _ready_in(self, seconds: float) -> datetime:
        return timezone.now() + timedelta(seconds=seconds)

    def _boot_ready(self, hang: bool = False) -> datetime | None:
        return None if hang else self._ready_in(self.boot_seconds)

    def _begin(
        self, machine: SimulatedMachine, state: ObservedState, ready_at: datetime | None
    ) -> None:
        machine.state = state
        machine.transition_started_at = timezone.now()
        machine.transition_ready_at = ready_at

    def _settle(self, machine: SimulatedMachine) -> SimulatedMachine:
        """Complete the transitions whose time has come (the caller holds the row lock)."""
        now = timezone.now()
        changed = False
        ready = machine.transition_ready_at
        if ready is not None and ready <= now:
            settled = {
                ObservedState.PROVISIONING: ObservedState.RUNNING,
                ObservedState.REBOOTING: ObservedState.RUNNING,
                ObservedState.STOPPING: ObservedState.STOPPED,
            }.get(ObservedState(machine.state))
            if settled is not None:
                machine.state = settled
                machine.transition_started_at = machine.transition_ready_at = None
                changed = True
        if machine.state == ObservedState.RUNNING and machine.crash_at and machine.crash_at <= now:
            machine.state = ObservedState.ERROR
            machine.crash_at = None
            changed = True
        if changed:
            machine.save(update_fields=_CHANGING)
        return machine

    def _status(self, machine: SimulatedMachine) -> MachineStatus:
        ready = machine.transition_ready_at
        return MachineStatus(
            machine_id=machine.machine_id,
            state=ObservedState(machine.state),
            ip_addresses=(machine.ip_address,) if machine.ip_address else (),
            host_name=machine.host_name,
            detail={
                "backend": "simulated",
                "transition_ready_at": ready.isoformat() if ready else None,
                "gpu_uuids": [gpu["uuid"] for gpu in machine.gpus],
                "gpu_pci_bus_ids": [gpu["pci_bus_id"] for gpu in machine.gpus],
            },
        )

    def _missing(self, machine_id: str) -> MachineStatus:
        return MachineStatus(machine_id=machine_id, state=ObservedState.MISSING)


def simulate_loss(machine_id: str) -> bool:
    """Make the simulated backend forget a machine, as if its host died. True if it existed."""
    deleted, _ = SimulatedMachine.objects.filter(machine_id=machine_id).delete()
    return bool(deleted)


def simulate_crash(machine_id: str) -> bool:
    """Put a live simulated machine in ``error`` now. True if it was live."""
    updated = (
        SimulatedMachine.objects.filter(machine_id=machine_id)
        .exclude(state__in=[ObservedState.TERMINATED, ObservedState.STOPPED])
        .update(
            state=ObservedState.ERROR,
            transition_started_at=None,
            transition_ready_at=None,
            crash_at=None,
            updated_at=timezone.now(),
        )
    )
    return bool(updated)


# --- the in-memory test double ------------------------------------------------------------


@dataclass(frozen=True)
class BackendCall:
    """One call made to an ``InMemoryBackend``: the method, the machine id, and the spec if any."""

    method: str
    machine_id: str
    spec: MachineSpec | None = None


@dataclass
class _MemoryMachine:
    spec: MachineSpec
    state: ObservedState
    ip_address: str | None
    crash_pending: bool = False
    hang: bool = False


class InMemoryBackend(ProvisioningBackend):
    """A test double: no database, transitions complete at once, calls recorded in ``calls``.

    Honours the same magic values as the simulated backend (the transient count lives in the
    instance). ``fail_next("stop", TransientBackendError("..."), times=2)`` makes the next two
    ``stop`` calls raise; ``simulate_loss(machine_id)`` forgets a machine; ``reset()`` forgets
    everything. Thread-safe. Settings cache one backend per process (``get_backend``), so a
    test that configures it should call ``reset()`` or ``portal.provisioning.reset_backends()``.
    """

    def __init__(self, alias: str = "default", *, ip_network: str = "10.65.0.0/16") -> None:
        super().__init__(alias, ip_network=ip_network)
        try:
            self.ip_network = ipaddress.ip_network(ip_network)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"in-memory backend option ip_network: {exc}") from None
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.calls: list[BackendCall] = []
            self.machines: dict[str, _MemoryMachine] = {}
            self._create_attempts: dict[str, int] = {}
            self._failures: dict[str, list[BackendError]] = {}

    def fail_next(self, method: str, error: BackendError, times: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(method, []).extend([error] * times)

    def simulate_loss(self, machine_id: str) -> bool:
        with self._lock:
            return self.machines.pop(machine_id, None) is not None

    def _record(self, method: str, machine_id: str, spec: MachineSpec | None = None) -> None:
        self.calls.append(BackendCall(method, machine_id, spec))
        queued = self._failures.get(method)
        if queued:
            raise queued.pop(0)

    def _status(self, machine_id: str) -> MachineStatus:
        machine = self.machines.get(machine_id)
        if machine is None:
            return MachineStatus(machine_id=machine_id, state=ObservedState.MISSING)
        return MachineStatus(
            machine_id=machine_id,
            state=machine.state,
            ip_addresses=(machine.ip_address,) if machine.ip_address else (),
            host_name=machine.spec.host_name,
            detail={
                "backend": "memory",
                "gpu_uuids": [gpu.uuid for gpu in machine.spec.gpus],
                "gpu_pci_bus_ids": [gpu.pci_bus_id for gpu in machine.spec.gpus],
            },
        )

    def _booted(self, machine: _MemoryMachine) -> ObservedState:
        return ObservedState.PROVISIONING if machine.hang else ObservedState.RUNNING

    def create(self, spec: MachineSpec) -> MachineStatus:
        with self._lock:
            self._record("create", spec.machine_id, spec)
            if spec.machine_id in self.machines:
                return self._status(spec.machine_id)
            plan = FailurePlan.from_spec(spec)
            if plan.transient_failures:
                attempts = self._create_attempts.get(spec.machine_id, 0) + 1
                self._create_attempts[spec.machine_id] = attempts
                if attempts <= plan.transient_failures:
                    raise TransientBackendError(f"in-memory: create {spec.machine_id} timed out")
            error = plan.create_error(spec)
            if error is not None:
                raise error
            used = {m.ip_address for m in self.machines.values() if m.ip_address}
            address = next(
                (
                    str(a)
                    for a in itertools.islice(self.ip_network.hosts(), 1, None)
                    if str(a) not in used
                ),
                None,
            )
            if address is None:
                raise CapacityError(f"in-memory: no free address left in {self.ip_network}")
            machine = _MemoryMachine(
                spec=spec,
                state=ObservedState.RUNNING,
                ip_address=address,
                crash_pending=plan.crash,
                hang=plan.hang,
            )
            machine.state = self._booted(machine)
            self.machines[spec.machine_id] = machine
            return self._status(spec.machine_id)

    def start(self, spec: MachineSpec) -> MachineStatus:
        with self._lock:
            self._record("start", spec.machine_id, spec)
            machine = self.machines.get(spec.machine_id)
            if machine is not None and machine.state == ObservedState.ERROR:
                raise PermanentBackendError(f"in-memory: {spec.machine_id} is in error")
            if machine is not None and machine.state == ObservedState.STOPPED:
                machine.spec = dataclasses.replace(spec, name=machine.spec.name)
                machine.state = self._booted(machine)
            return self._status(spec.machine_id)

    def stop(self, machine_id: str) -> MachineStatus:
        with self._lock:
            self._record("stop", machine_id)
            machine = self.machines.get(machine_id)
            if machine is not None and machine.state != ObservedState.TERMINATED:
                machine.state = ObservedState.STOPPED
                machine.crash_pending = False
            return self._status(machine_id)

    def reboot(self, machine_id: str) -> MachineStatus:
        with self._lock:
            self._record("reboot", machine_id)
            machine = self.machines.get(machine_id)
            if machine is not None and machine.state == ObservedState.STOPPED:
                raise PermanentBackendError(f"in-memory: {machine_id} is stopped; start it")
            if machine is not None and machine.state in (
                ObservedState.RUNNING,
                ObservedState.ERROR,
            ):
                machine.state = ObservedState.RUNNING
                machine.crash_pending = False
            return self._status(machine_id)

    def terminate(self, machine_id: str) -> MachineStatus:
        with self._lock:
            self._record("terminate", machine_id)
            machine = self.machines.get(machine_id)
            if machine is None:
                return MachineStatus(machine_id=machine_id, state=ObservedState.TERMINATED)
            machine.state = ObservedState.TERMINATED
            machine.ip_address = None
            return self._status(machine_id)

    def describe(self, machine_id: str) -> MachineStatus:
        with self._lock:
            self._record("describe", machine_id)
            machine = self.machines.get(machine_id)
            if (
                machine is not None
                and machine.crash_pending
                and machine.state == ObservedState.RUNNING
            ):
                machine.state = ObservedState.ERROR
                machine.crash_pending = False
            return self._status(machine_id)

    def list_machines(self) -> list[MachineStatus]:
        with self._lock:
            self._record("list_machines", "")
            return [
                self._status(machine_id)
                for machine_id, machine in sorted(self.machines.items())
                if machine.state != ObservedState.TERMINATED
            ]
