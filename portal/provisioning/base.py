"""The provisioning backend interface: what the portal asks of whatever runs the machines.

Backends are chosen the way Django chooses email or storage backends: ``PROVISIONING_BACKENDS``
maps aliases to a ``BACKEND`` dotted path and ``OPTIONS``; ``PROVISIONING_BACKEND`` names the
alias in use (see :func:`portal.provisioning.get_backend`). Frozen dataclasses go in and out.

Every operation is idempotent per machine id: creating a machine that exists returns it,
stopping a stopped machine or terminating a terminated one succeeds and changes nothing.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum


class ObservedState(StrEnum):
    """What a backend says a machine is doing."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    TERMINATED = "terminated"
    MISSING = "missing"  # the backend does not know this machine
    ERROR = "error"


@dataclass(frozen=True)
class GpuDevice:
    """A GPU (or one MIG slice of it) to pass through."""

    uuid: str
    pci_bus_id: str
    mig_start: int | None = None
    mig_size: int | None = None


@dataclass(frozen=True)
class MachineSpec:
    """Everything a backend needs to build (or start again) one machine."""

    machine_id: str  # stable per instance, e.g. "inst-42"
    name: str
    host_name: str
    vcpus: int
    ram_gib: int
    disk_gb: int
    image: str
    gpus: tuple[GpuDevice, ...] = ()
    ssh_public_keys: tuple[str, ...] = ()
    user_data: str = ""
    # Where the guest posts once its first boot is done (cloud-init's phone_home), if the
    # backend passes it on; see portal.provisioning.phone_home.
    ready_url: str = ""
    host_uri: str = ""  # where the host's hypervisor answers (libvirt connection URI)


@dataclass(frozen=True)
class MachineStatus:
    machine_id: str
    state: ObservedState
    ip_addresses: tuple[str, ...] = ()
    host_name: str = ""
    detail: dict = field(default_factory=dict)


class BackendError(Exception):
    """Base of the errors a backend raises."""


class TransientBackendError(BackendError):
    """Try again later: a timeout, a busy hypervisor, a lost connection."""


class CapacityError(BackendError):
    """The host cannot take this machine (it disagrees with our capacity accounting)."""


class PermanentBackendError(BackendError):
    """Retrying will not help: a bad image, an invalid spec, a broken host."""


class ProvisioningBackend(ABC):
    """One way of running machines. Subclasses take their settings ``OPTIONS`` as keywords."""

    # What this engine cannot do to a machine, of "start", "stop" and "reboot" (a Slurm
    # allocation cannot be stopped keeping its GPUs' state): the portal refuses these actions
    # with ``action_unsupported`` before asking, and the backend's methods raise
    # ``PermanentBackendError``.
    unsupported_actions: frozenset[str] = frozenset()

    def __init__(self, alias: str = "default", **options) -> None:
        self.alias = alias
        self.options = options

    @abstractmethod
    def create(self, spec: MachineSpec) -> MachineStatus:
        """Build and boot the machine (idempotent: an existing machine id is returned as is)."""

    @abstractmethod
    def start(self, spec: MachineSpec) -> MachineStatus:
        """Boot a stopped machine, possibly on another host with other GPUs (``spec`` says)."""

    @abstractmethod
    def stop(self, machine_id: str) -> MachineStatus:
        """Shut down, keeping the boot disk; the GPUs are given back."""

    @abstractmethod
    def reboot(self, machine_id: str) -> MachineStatus: ...

    @abstractmethod
    def terminate(self, machine_id: str) -> MachineStatus:
        """Destroy the machine and its boot disk. Terminating a missing machine succeeds."""

    @abstractmethod
    def describe(self, machine_id: str) -> MachineStatus:
        """What the machine is doing now (``MISSING`` if the backend does not know it)."""

    @abstractmethod
    def list_machines(self) -> list[MachineStatus]:
        """Every machine this backend runs, for the reconciler to compare with the database."""
