"""Real virtual machines with whole-GPU PCI passthrough, through libvirt.

Options (``PROVISIONING_BACKENDS["libvirt"]["OPTIONS"]``):

- ``uri_template``: the connection URI of a host, ``{host}`` replaced by the host's name, e.g.
  ``qemu+ssh://root@{host}/system``. A spec's ``host_uri`` wins when set. A template without
  ``{host}`` (``qemu:///system``, ``test:///default``) is one hypervisor for every host.
- ``shutdown_timeout_seconds``: how long ``stop`` waits for the guest to power off after the
  ACPI shutdown request before it pulls the plug (``destroy``). ``stop`` blocks that long.
- ``image_dir``: the directory of a libvirt storage pool on every host. Base images are
  ``<image_dir>/<image>.qcow2``; each machine's boot disk is a qcow2 overlay on its image,
  ``<image_dir>/<machine_id>.qcow2``, ``disk_gb`` GB (10^9 bytes) big, created in that pool.
- ``network``: the libvirt network the machine's NIC joins (default ``default``).

The domain is named after the machine id and carries ``<metadata>`` in the portal's namespace
(:data:`NS`: machine id, name, host, image), which is how ``list_machines`` tells the portal's
domains from any others on a host. Each GPU becomes a managed PCI ``<hostdev>``; its address is
parsed from the ``nvidia-smi`` bus id (``00000000:18:00.0`` → domain 0x0000, bus 0x18, slot
0x00, function 0x0). **MIG slices are refused** (``PermanentBackendError``): a MIG instance is
not a PCI function and cannot be passed through; running MIG slices in VMs needs NVIDIA vGPU
(mediated devices, ``<hostdev type='mdev'>``), which this backend does not do.

Where a machine runs is remembered in ``LibvirtPlacement`` (the database), because ``stop``,
``reboot``, ``terminate`` and ``describe`` receive only the machine id. ``start`` may move a
stopped machine to another host (the spec says which): its boot disk must then be visible there,
i.e. ``image_dir`` on shared storage; the move is refused while the old host is unreachable or
the machine still runs there, so one disk never boots twice. ``start`` also redefines the domain
when the spec's GPUs, vCPUs or memory differ from the defined ones.

Semantics the callers rely on (the simulated backend's docstring has the same list):

- ``create`` defines and boots the domain and returns what libvirt says (``running`` at once;
  the guest OS is still booting). A domain that already exists is returned as it is, also a
  stopped one: call ``start`` then. If booting fails for good, the definition, disk and
  placement are removed again.
- ``stop`` blocks until the domain is off; ``reboot`` of a machine that is off raises
  ``PermanentBackendError``; ``terminate`` destroys, undefines and deletes the boot disk, and
  returns ``terminated`` for an unknown machine; ``describe`` says ``missing`` for a domain
  that is not there. A host that cannot be reached raises ``TransientBackendError`` (never
  ``missing``), also from ``list_machines``, which would otherwise under-report.
- libvirt errors become ``TransientBackendError`` (connection, RPC, timeouts, busy),
  ``CapacityError`` (a passed-through PCI device is in use by another domain, the storage pool
  is full) or
  ``PermanentBackendError`` (invalid XML, bad image, unsupported configuration, ...).

State mapping: running, blocked, pmsuspended and paused (by an operator or a migration) →
``running``; paused on an I/O error or crash → ``error``; shutdown (in progress) →
``stopping``; shutoff → ``stopped`` (``error`` when it crashed or failed to start); crashed →
``error``; nostate → ``provisioning``. ``detail`` has the libvirt state and reason, the URI,
vCPUs, memory and the defined GPUs as ``nvidia-smi`` bus ids (``gpu_pci_bus_ids``).

``libvirt`` (libvirt-python, the ``libvirt`` dependency group) is imported on first use, so this
module imports without it; using the backend without it raises ``PermanentBackendError``.
Connections are opened per call and closed after it (safe across Celery's forked workers).

Every machine boots with a cloud-init NoCloud seed (``portal.provisioning.cloud_init``): a raw
volume ``<machine_id>-seed.iso`` in the pool, uploaded through libvirt (so it works over
``qemu+ssh`` too) and attached read-only as the second disk, with the spec's SSH keys, the
hostname, the customer's user data and ``instance-id: <machine_id>``, which stays the same
across stop and start so cloud-init does not run its per-instance steps twice. ``terminate``
deletes it with the boot disk. ``seed=False`` turns this off (libvirt's ``test:///`` driver
cannot upload volumes).

Ready means reachable: with ``readiness="ssh"`` (the default) a running domain is reported as
``provisioning`` (``detail["stage"] == "booting"``) until its SSH port answers with an SSH
banner; with ``readiness="phone_home"`` the seed also asks cloud-init to post to the machine's
``ready_url`` when its first boot is done (after the keys are in place), and the machine is
ready once that post has arrived (``portal.provisioning.phone_home``) and its SSH port answers;
``readiness="libvirt"`` takes libvirt's ``running`` as ready. ``detail["ssh"]`` gives where to
connect (``host``, ``port``, ``user``).

More options:

- ``domain_type``: ``kvm`` (default), or ``qemu`` for software emulation (TCG) where the host
  has no usable KVM; ``cpu_model``: empty for ``host-passthrough``, else a model (``qemu64``).
- ``direct_boot``: ``{image: {"kernel": path, "initrd": path, "cmdline": str}}`` boots an image's
  kernel directly (the boot disk is still attached as ``vda``); ``ssh_users``: ``{image: user}``
  names the image's login user (default ``ssh_user``, ``ubuntu``).
- ``ssh_forward``: ``{"address": "127.0.0.1", "first_port": 22000, "last_port": 22999}`` gives
  each machine QEMU user-mode networking with its SSH port forwarded to a port of that range on
  the host (kept in the domain's metadata), instead of joining ``network``: for a single host
  without a bridged network, and for tests.
- ``console_dir``: write each machine's serial console to ``<console_dir>/<machine_id>.log``.
- ``attach_gpus=False``: the portal still places and bills the machine's GPUs, but the domain
  gets no PCI passthrough devices: for hosts whose GPUs are registered but not real (a lab,
  the tests). Never on a production host.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET  # nosec B405 # builds XML; defusedxml parses

from defusedxml import ElementTree as SafeET
from django.core.exceptions import ImproperlyConfigured

from portal.provisioning import phone_home
from portal.provisioning.base import (
    BackendError,
    CapacityError,
    MachineSpec,
    MachineStatus,
    ObservedState,
    PermanentBackendError,
    ProvisioningBackend,
    TransientBackendError,
)
from portal.provisioning.cloud_init import Seed, hostname_for
from portal.provisioning.models import LibvirtPlacement

logger = logging.getLogger(__name__)

NS = "http://gpucloud.example/xmlns/portal-machine/1.0"
ET.register_namespace("portal", NS)
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
READINESS = ("ssh", "phone_home", "libvirt")
SSH_PROBE_SECONDS = 1.0  # how long a readiness probe waits for the guest's SSH banner

POLL_SECONDS = 0.25  # how often stop looks whether the guest has powered off
KIB_PER_GIB = 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # domain names and file names
_PCI_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<slot>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)
# The host disagrees with our capacity accounting: a GPU taken by another domain, a full disk.
_NO_ROOM_RE = re.compile(
    r"PCI device \S+ is in use|device \S+ is (?:already )?in use|not enough free space|no space left",
    re.IGNORECASE,
)


@dataclass(frozen=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, bus_id: str) -> PciAddress:
        """``00000000:18:00.0`` (nvidia-smi) or ``0000:18:00.0`` (lspci) → the address."""
        match = _PCI_RE.match(bus_id.strip())
        if match is None:
            raise PermanentBackendError(f"GPU PCI bus id {bus_id!r} is not like 00000000:18:00.0")
        address = cls(
            domain=int(match["domain"] or "0", 16),
            bus=int(match["bus"], 16),
            slot=int(match["slot"], 16),
            function=int(match["function"], 16),
        )
        if address.domain > 0xFFFF or address.slot > 0x1F:
            raise PermanentBackendError(f"GPU PCI bus id {bus_id!r} is out of range")
        return address

    @classmethod
    def from_xml(cls, element: Any) -> PciAddress:
        return cls(
            *(int(element.get(name, "0"), 0) for name in ("domain", "bus", "slot", "function"))
        )

    def xml_attributes(self) -> dict[str, str]:
        return {
            "domain": f"0x{self.domain:04x}",
            "bus": f"0x{self.bus:02x}",
            "slot": f"0x{self.slot:02x}",
            "function": f"0x{self.function:x}",
        }

    def nvidia_smi(self) -> str:
        return f"{self.domain:08X}:{self.bus:02X}:{self.slot:02X}.{self.function:X}"


def _port_free(address: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def ssh_answers(host: str, port: int, timeout: float = SSH_PROBE_SECONDS) -> bool:
    """Whether an SSH server answers at host:port: its banner starts with ``SSH-``. A forwarded
    port accepts connections before the guest's sshd listens, so connecting is not enough."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# --- libvirt, imported on first use -------------------------------------------------------

_quiet_lock = threading.Lock()
_quiet = False


def _libvirt():
    global _quiet
    try:
        import libvirt
    except ImportError as exc:
        raise PermanentBackendError(
            "the libvirt provisioning backend needs libvirt-python, which is not installed: "
            "apt-get install libvirt-dev pkg-config, then scripts/bootstrap.sh (it syncs the "
            "'libvirt' dependency group when libvirt-dev is there)"
        ) from exc
    with _quiet_lock:
        if not _quiet:
            # libvirt prints every error to stderr by default; we raise them instead.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _quiet = True
    return libvirt


def _codes(lv, *names: str) -> set[int]:
    return {getattr(lv, name) for name in names if hasattr(lv, name)}


def translate_error(lv, exc: Exception, context: str) -> BackendError:
    """Map a ``libvirtError`` to the backend error a caller can act on."""
    code, origin = exc.get_error_code(), exc.get_error_domain()
    message = f"libvirt: {context}: {exc.get_error_message() or exc}"
    if _NO_ROOM_RE.search(str(exc)):
        return CapacityError(message)
    transient_codes = _codes(
        lv,
        "VIR_ERR_NO_CONNECT",
        "VIR_ERR_INVALID_CONN",
        "VIR_ERR_RPC",
        "VIR_ERR_OPERATION_TIMEOUT",
        "VIR_ERR_AGENT_UNRESPONSIVE",
        "VIR_ERR_RESOURCE_BUSY",
    )
    transient_origins = _codes(
        lv, "VIR_FROM_RPC", "VIR_FROM_REMOTE", "VIR_FROM_SSH", "VIR_FROM_LIBSSH"
    )
    if code in transient_codes or origin in transient_origins:
        return TransientBackendError(message)
    return PermanentBackendError(message)


def _observe(lv, state: int, reason: int) -> ObservedState:
    if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_PMSUSPENDED):
        return ObservedState.RUNNING
    if state == lv.VIR_DOMAIN_PAUSED:
        broken = _codes(
            lv,
            "VIR_DOMAIN_PAUSED_IOERROR",
            "VIR_DOMAIN_PAUSED_CRASHED",
            "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED",
        )
        return ObservedState.ERROR if reason in broken else ObservedState.RUNNING
    if state == lv.VIR_DOMAIN_SHUTDOWN:
        return ObservedState.STOPPING
    if state == lv.VIR_DOMAIN_SHUTOFF:
        broken = _codes(lv, "VIR_DOMAIN_SHUTOFF_CRASHED", "VIR_DOMAIN_SHUTOFF_FAILED")
        return ObservedState.ERROR if reason in broken else ObservedState.STOPPED
    if state == lv.VIR_DOMAIN_CRASHED:
        return ObservedState.ERROR
    return ObservedState.PROVISIONING  # nostate: libvirt has not settled on one yet


_STATE_NAMES = {
    "VIR_DOMAIN_NOSTATE": "nostate",
    "VIR_DOMAIN_RUNNING": "running",
    "VIR_DOMAIN_BLOCKED": "blocked",
    "VIR_DOMAIN_PAUSED": "paused",
    "VIR_DOMAIN_SHUTDOWN": "shutdown",
    "VIR_DOMAIN_SHUTOFF": "shutoff",
    "VIR_DOMAIN_CRASHED": "crashed",
    "VIR_DOMAIN_PMSUSPENDED": "pmsuspended",
}


def _lookup(lv, conn, name: str):
    """The domain called ``name``, or None."""
    try:
        return conn.lookupByName(name)
    except lv.libvirtError as exc:
        if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
            return None
        raise


# libvirt's scaled-integer units (XMLDesc always says KiB, but a hand-made domain may not).
_UNIT_BYTES = {"b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6, "m": 2**20}
_UNIT_BYTES |= {
    "mib": 2**20,
    "gb": 10**9,
    "g": 2**30,
    "gib": 2**30,
    "tb": 10**12,
    "t": 2**40,
    "tib": 2**40,
}


@dataclass(frozen=True)
class DefinedMachine:
    """What a domain's XML says, parsed back."""

    machine_id: str
    vcpus: int
    memory_kib: int
    gpus: tuple[PciAddress, ...]
    metadata: dict[str, str]

    @classmethod
    def parse(cls, xml: str) -> DefinedMachine:
        root = SafeET.fromstring(xml)
        memory = root.find("memory")
        unit = (memory.get("unit", "KiB") if memory is not None else "KiB").lower()
        meta = root.find(f"metadata/{{{NS}}}machine")
        return cls(
            machine_id=root.findtext("name", ""),
            vcpus=int(root.findtext("vcpu", "0")),
            memory_kib=int(memory.text) * _UNIT_BYTES[unit] // 1024 if memory is not None else 0,
            gpus=tuple(
                PciAddress.from_xml(address)
                for hostdev in root.findall("devices/hostdev")
                if hostdev.get("type") == "pci"
                for address in hostdev.findall("source/address")
            ),
            metadata={child.tag.split("}")[-1]: child.text or "" for child in meta}
            if meta is not None
            else {},
        )

    @property
    def is_portal_machine(self) -> bool:
        return bool(self.metadata.get("machine-id"))


class LibvirtBackend(ProvisioningBackend):
    """Virtual machines with GPU passthrough on libvirt hosts (see the module docstring)."""

    def __init__(
        self,
        alias: str = "default",
        *,
        uri_template: str = "qemu:///system",
        shutdown_timeout_seconds: float = 60,
        image_dir: str = "/var/lib/libvirt/images",
        network: str = "default",
        seed: bool = True,
        readiness: str = "ssh",
        domain_type: str = "kvm",
        cpu_model: str = "",
        direct_boot: dict | None = None,
        ssh_user: str = "ubuntu",
        ssh_users: dict | None = None,
        ssh_forward: dict | None = None,
        console_dir: str = "",
        attach_gpus: bool = True,
    ) -> None:
        super().__init__(
            alias,
            uri_template=uri_template,
            shutdown_timeout_seconds=shutdown_timeout_seconds,
            image_dir=image_dir,
            network=network,
            seed=seed,
            readiness=readiness,
            domain_type=domain_type,
            cpu_model=cpu_model,
            direct_boot=direct_boot,
            ssh_user=ssh_user,
            ssh_users=ssh_users,
            ssh_forward=ssh_forward,
            console_dir=console_dir,
            attach_gpus=attach_gpus,
        )
        if readiness not in READINESS:
            raise ImproperlyConfigured(
                f"libvirt backend option readiness must be one of {', '.join(READINESS)}"
            )
        if domain_type not in ("kvm", "qemu"):
            raise ImproperlyConfigured("libvirt backend option domain_type must be kvm or qemu")
        if ssh_forward is not None and not (
            isinstance(ssh_forward, dict)
            and 0
            < int(ssh_forward.get("first_port", 0))
            <= int(ssh_forward.get("last_port", 0))
            < 65536
        ):
            raise ImproperlyConfigured(
                "libvirt backend option ssh_forward needs first_port <= last_port (1-65535)"
            )
        self.seed = bool(seed)
        self.readiness = readiness
        self.domain_type = domain_type
        self.cpu_model = cpu_model
        self.direct_boot = dict(direct_boot or {})
        self.ssh_user = ssh_user
        self.ssh_users = dict(ssh_users or {})
        self.ssh_forward = dict(ssh_forward) if ssh_forward else None
        self.console_dir = console_dir
        self.attach_gpus = bool(attach_gpus)
        if not isinstance(uri_template, str) or not uri_template:
            raise ImproperlyConfigured(
                "libvirt backend option uri_template must be a connection URI"
            )
        try:
            uri_template.format(host="example-host")
        except (KeyError, IndexError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"libvirt backend option uri_template {uri_template!r} may only use {{host}} ({exc!r})"
            ) from None
        try:
            self.shutdown_timeout_seconds = float(shutdown_timeout_seconds)
        except (TypeError, ValueError):
            raise ImproperlyConfigured(
                f"libvirt backend option shutdown_timeout_seconds must be a number, not {shutdown_timeout_seconds!r}"
            ) from None
        if self.shutdown_timeout_seconds < 0:
            raise ImproperlyConfigured(
                "libvirt backend option shutdown_timeout_seconds must not be negative"
            )
        if not isinstance(image_dir, str) or not os.path.isabs(image_dir):
            raise ImproperlyConfigured(
                f"libvirt backend option image_dir must be an absolute path, not {image_dir!r}"
            )
        self.uri_template = uri_template
        self.image_dir = os.path.normpath(image_dir)
        self.network = network

    # --- the domain XML (pure: no libvirt needed) --------------------------------------------

    def validate(self, spec: MachineSpec) -> tuple[PciAddress, ...]:
        """Refuse what this backend cannot build; return the GPUs' PCI addresses."""
        for label, value in (("machine id", spec.machine_id), ("image", spec.image)):
            if not _NAME_RE.match(value):
                raise PermanentBackendError(f"{label} {value!r} is not a safe domain or file name")
        if spec.vcpus < 1 or spec.ram_gib < 1 or spec.disk_gb < 1:
            raise PermanentBackendError(
                f"{spec.machine_id}: vcpus, ram_gib and disk_gb must be positive"
            )
        if any(gpu.mig_start is not None or gpu.mig_size is not None for gpu in spec.gpus):
            raise PermanentBackendError(
                f"{spec.machine_id}: MIG slices cannot be passed through as PCI devices; "
                "MIG in virtual machines needs NVIDIA vGPU (mediated devices), which the libvirt "
                "backend does not support. Only whole GPUs can be used."
            )
        addresses = tuple(PciAddress.parse(gpu.pci_bus_id) for gpu in spec.gpus)
        if len(set(addresses)) != len(addresses):
            raise PermanentBackendError(f"{spec.machine_id}: the same GPU is listed twice")
        return addresses

    def disk_path(self, machine_id: str) -> str:
        return os.path.join(self.image_dir, f"{machine_id}.qcow2")

    def seed_path(self, machine_id: str) -> str:
        return os.path.join(self.image_dir, f"{machine_id}-seed.iso")

    def seed_for(self, spec: MachineSpec) -> Seed:
        return Seed(
            instance_id=spec.machine_id,
            hostname=hostname_for(spec.name, spec.machine_id),
            ssh_public_keys=tuple(spec.ssh_public_keys),
            user_data=spec.user_data,
            phone_home_url=spec.ready_url if self.readiness == "phone_home" else "",
        )

    def domain_xml(self, spec: MachineSpec, uuid: str | None = None, ssh_port: int = 0) -> str:
        addresses = self.validate(spec)
        domain = ET.Element("domain", type=self.domain_type)
        ET.SubElement(domain, "name").text = spec.machine_id
        if uuid:
            ET.SubElement(domain, "uuid").text = uuid
        if title := " ".join(spec.name.split())[:200]:
            ET.SubElement(domain, "title").text = title
        metadata = ET.SubElement(ET.SubElement(domain, "metadata"), f"{{{NS}}}machine")
        for tag, value in (
            ("machine-id", spec.machine_id),
            ("name", spec.name),
            ("host", spec.host_name),
            ("image", spec.image),
            *((("ssh-port", str(ssh_port)),) if ssh_port else ()),
        ):
            ET.SubElement(metadata, f"{{{NS}}}{tag}").text = value
        ET.SubElement(domain, "memory", unit="KiB").text = str(spec.ram_gib * KIB_PER_GIB)
        ET.SubElement(domain, "vcpu", placement="static").text = str(spec.vcpus)
        os_element = ET.SubElement(domain, "os")
        ET.SubElement(os_element, "type", arch="x86_64", machine="q35").text = "hvm"
        if boot := self.direct_boot.get(spec.image):
            ET.SubElement(os_element, "kernel").text = boot["kernel"]
            if boot.get("initrd"):
                ET.SubElement(os_element, "initrd").text = boot["initrd"]
            ET.SubElement(os_element, "cmdline").text = boot.get("cmdline", "console=ttyS0")
        else:
            ET.SubElement(os_element, "boot", dev="hd")
        features = ET.SubElement(domain, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        if self.domain_type == "qemu":  # without a cap, TCG's code cache doubles QEMU's memory
            tcg = ET.SubElement(features, "tcg")
            ET.SubElement(tcg, "tb-cache", unit="MiB").text = "128"
        if self.cpu_model:
            cpu = ET.SubElement(domain, "cpu", mode="custom", match="exact")
            ET.SubElement(cpu, "model", fallback="allow").text = self.cpu_model
        else:
            ET.SubElement(domain, "cpu", mode="host-passthrough")
        for event, action in (
            ("on_poweroff", "destroy"),
            ("on_reboot", "restart"),
            ("on_crash", "destroy"),
        ):
            ET.SubElement(domain, event).text = action
        devices = ET.SubElement(domain, "devices")
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=self.disk_path(spec.machine_id))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        if self.seed:
            seed = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(seed, "driver", name="qemu", type="raw")
            ET.SubElement(seed, "source", file=self.seed_path(spec.machine_id))
            ET.SubElement(seed, "target", dev="vdb", bus="virtio")
            ET.SubElement(seed, "readonly")
        if self.ssh_forward:
            pass  # QEMU user-mode networking, below: libvirt's <interface type='user'> has no
            # port forwarding before libvirt 9.3
        elif self.network:
            interface = ET.SubElement(devices, "interface", type="network")
            ET.SubElement(interface, "source", network=self.network)
            ET.SubElement(interface, "model", type="virtio")
        for address in addresses if self.attach_gpus else ():
            hostdev = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
            ET.SubElement(ET.SubElement(hostdev, "source"), "address", **address.xml_attributes())
        if self.console_dir:
            serial = ET.SubElement(devices, "serial", type="file")
            log = os.path.join(self.console_dir, f"{spec.machine_id}.log")
            ET.SubElement(serial, "source", path=log, append="on")
            ET.SubElement(serial, "target", port="0")
        else:
            ET.SubElement(devices, "console", type="pty")
        if self.ssh_forward and ssh_port:
            address = self.ssh_forward.get("address", "127.0.0.1")
            commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
            for value in (
                "-netdev",
                f"user,id=portalnet0,hostfwd=tcp:{address}:{ssh_port}-:22",
                "-device",
                # a fixed slot, or the NIC takes the one libvirt gives the disk
                "virtio-net-pci,netdev=portalnet0,bus=pcie.0,addr=0x10",
            ):
                ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)
        return ET.tostring(domain, encoding="unicode")

    def volume_xml(self, spec: MachineSpec) -> str:
        volume = ET.Element("volume")
        ET.SubElement(volume, "name").text = f"{spec.machine_id}.qcow2"
        ET.SubElement(volume, "capacity", unit="GB").text = str(spec.disk_gb)
        ET.SubElement(ET.SubElement(volume, "target"), "format", type="qcow2")
        backing = ET.SubElement(volume, "backingStore")
        ET.SubElement(backing, "path").text = os.path.join(self.image_dir, f"{spec.image}.qcow2")
        ET.SubElement(backing, "format", type="qcow2")
        return ET.tostring(volume, encoding="unicode")

    # --- connections and placements --------------------------------------------------------

    def uri_for(self, spec: MachineSpec) -> str:
        return spec.host_uri or self.uri_template.format(host=spec.host_name)

    @property
    def _single_uri(self) -> str | None:
        """The URI of every machine when the template names no host."""
        return None if "{host}" in self.uri_template else self.uri_template

    def _where(self, machine_id: str) -> tuple[str, str] | None:
        """(uri, host name) of the machine, or None when nothing says where it would be."""
        placement = LibvirtPlacement.objects.filter(machine_id=machine_id).first()
        if placement is not None:
            return placement.uri, placement.host_name
        if self._single_uri is not None:
            return self._single_uri, ""
        return None

    def _place(self, spec: MachineSpec, uri: str) -> None:
        LibvirtPlacement.objects.update_or_create(
            machine_id=spec.machine_id, defaults={"uri": uri, "host_name": spec.host_name}
        )

    @contextlib.contextmanager
    def _connect(self, uri: str) -> Iterator[Any]:
        """A connection to ``uri``; libvirt errors inside become backend errors."""
        lv = _libvirt()
        try:
            conn = lv.open(uri)
        except lv.libvirtError as exc:
            error = translate_error(lv, exc, f"cannot connect to {uri}")
            if isinstance(error, PermanentBackendError):
                # an unreachable daemon looks like this too; only a bad URI or auth is permanent
                code = exc.get_error_code()
                if code not in _codes(
                    lv,
                    "VIR_ERR_AUTH_FAILED",
                    "VIR_ERR_AUTH_CANCELLED",
                    "VIR_ERR_NO_SUPPORT",
                    "VIR_ERR_INVALID_ARG",
                ):
                    error = TransientBackendError(str(error))
            raise error from exc
        try:
            yield conn
        except lv.libvirtError as exc:
            raise translate_error(lv, exc, uri) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _pool(self, lv, conn, required: bool = True):
        """The storage pool whose target path is ``image_dir``."""
        for pool in conn.listAllStoragePools(0):
            path = SafeET.fromstring(pool.XMLDesc(0)).findtext("target/path")
            if path and os.path.normpath(path) == self.image_dir:
                if not pool.isActive():
                    pool.create(0)
                return pool
        if required:
            raise PermanentBackendError(
                f"libvirt: {conn.getURI()} has no storage pool for {self.image_dir}; define one, e.g. "
                f"virsh pool-define-as images dir --target {self.image_dir} && virsh pool-start images "
                "&& virsh pool-autostart images"
            )
        return None

    def _volume(self, lv, conn, machine_id: str):
        pool = self._pool(lv, conn, required=False)
        if pool is None:
            return None
        try:
            return pool.storageVolLookupByName(f"{machine_id}.qcow2")
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def _undefine(self, lv, dom) -> None:
        keep_nothing = (
            lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
        for flags in (keep_nothing | lv.VIR_DOMAIN_UNDEFINE_NVRAM, keep_nothing, None):
            try:
                dom.undefine() if flags is None else dom.undefineFlags(flags)
                return
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    return
                if flags is None or exc.get_error_code() not in _codes(
                    lv, "VIR_ERR_INVALID_ARG", "VIR_ERR_NO_SUPPORT"
                ):
                    raise

    def _destroy(self, lv, dom) -> None:
        try:
            dom.destroy()
        except lv.libvirtError:
            if dom.isActive():
                raise  # otherwise it went off by itself meanwhile

    def _status(
        self, lv, dom, uri: str, host_name: str, defined: DefinedMachine | None = None, **extra
    ) -> MachineStatus:
        state, reason = dom.state()
        defined = defined or DefinedMachine.parse(dom.XMLDesc(0))
        observed = _observe(lv, state, reason)
        addresses: tuple[str, ...] = ()
        if observed == ObservedState.RUNNING:
            with contextlib.suppress(lv.libvirtError):
                interfaces = (
                    dom.interfaceAddresses(lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0) or {}
                )
                addresses = tuple(
                    entry["addr"]
                    for interface in interfaces.values()
                    for entry in interface.get("addrs") or ()
                )
        state_name = next(
            (label for name, label in _STATE_NAMES.items() if getattr(lv, name, None) == state),
            str(state),
        )
        ssh = self._ssh_target(defined, addresses)
        if observed == ObservedState.RUNNING and self.readiness == "ssh":
            ready = ssh is not None and ssh_answers(ssh["host"], ssh["port"])
        elif observed == ObservedState.RUNNING and self.readiness == "phone_home":
            phoned = phone_home.received(dom.name())
            extra.setdefault("phoned_home", phoned)
            # a later boot does not phone home again (once per instance id): SSH tells then
            ready = phoned and (ssh is None or ssh_answers(ssh["host"], ssh["port"]))
        else:
            ready = True
        if observed == ObservedState.RUNNING and self.readiness != "libvirt":
            extra.setdefault("stage", "ready" if ready else "booting")
            if not ready:
                observed = ObservedState.PROVISIONING
        if ssh is not None:
            extra.setdefault("ssh", ssh)
        return MachineStatus(
            machine_id=dom.name(),
            state=observed,
            ip_addresses=addresses,
            host_name=host_name or defined.metadata.get("host", ""),
            detail={
                "backend": "libvirt",
                "uri": uri,
                "libvirt_state": state_name,
                "libvirt_reason": reason,
                "vcpus": defined.vcpus,
                "memory_kib": defined.memory_kib,
                "gpu_pci_bus_ids": [address.nvidia_smi() for address in defined.gpus],
                **extra,
            },
        )

    def _ssh_target(self, defined: DefinedMachine, addresses: tuple[str, ...]) -> dict | None:
        """Where to log into the machine: the forwarded port, else its first IPv4 address."""
        user = self.ssh_users.get(defined.metadata.get("image", ""), self.ssh_user)
        port = int(defined.metadata.get("ssh-port") or 0)
        if self.ssh_forward and port:
            return {
                "host": self.ssh_forward.get("address", "127.0.0.1"),
                "port": port,
                "user": user,
            }
        ipv4 = [address for address in addresses if ":" not in address]
        if ipv4 or addresses:
            return {"host": (ipv4 or list(addresses))[0], "port": 22, "user": user}
        return None

    def _free_ssh_port(self, conn) -> int:
        """The lowest port of ``ssh_forward``'s range no portal domain on ``conn`` uses and
        nothing on this host listens on."""
        if not self.ssh_forward:
            return 0
        taken = set()
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(Exception):
                taken.add(int(DefinedMachine.parse(dom.XMLDesc(0)).metadata.get("ssh-port") or 0))
        address = self.ssh_forward.get("address", "127.0.0.1")
        first, last = int(self.ssh_forward["first_port"]), int(self.ssh_forward["last_port"])
        for port in range(first, last + 1):
            if port not in taken and _port_free(address, port):
                return port
        raise CapacityError(f"libvirt: no free SSH port between {first} and {last}")

    def _upload_seed(self, lv, conn, pool, spec: MachineSpec) -> None:
        """Write the machine's NoCloud seed into the pool (replacing an older one)."""
        body = self.seed_for(spec).iso()
        name = f"{spec.machine_id}-seed.iso"
        with contextlib.suppress(lv.libvirtError):
            pool.storageVolLookupByName(name).delete(0)
        volume = ET.Element("volume")
        ET.SubElement(volume, "name").text = name
        ET.SubElement(volume, "capacity", unit="bytes").text = str(len(body))
        ET.SubElement(ET.SubElement(volume, "target"), "format", type="raw")
        vol = pool.createXML(ET.tostring(volume, encoding="unicode"), 0)
        stream = conn.newStream(0)
        try:
            vol.upload(stream, 0, len(body), 0)
            stream.sendAll(lambda _stream, nbytes, buffer: buffer.read(nbytes), io.BytesIO(body))
            stream.finish()
        except lv.libvirtError:
            with contextlib.suppress(lv.libvirtError):
                stream.abort()
            raise

    def _has_seed(self, lv, conn, machine_id: str) -> bool:
        pool = self._pool(lv, conn, required=False)
        try:
            return pool is not None and bool(pool.storageVolLookupByName(f"{machine_id}-seed.iso"))
        except lv.libvirtError:
            return False

    def _delete_seed(self, lv, conn, machine_id: str) -> None:
        pool = self._pool(lv, conn, required=False)
        if pool is None:
            return
        try:
            pool.storageVolLookupByName(f"{machine_id}-seed.iso").delete(0)
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                raise

    @staticmethod
    def _missing(machine_id: str, host_name: str = "") -> MachineStatus:
        return MachineStatus(
            machine_id=machine_id, state=ObservedState.MISSING, host_name=host_name
        )

    # --- the interface ---------------------------------------------------------------------

    def create(self, spec: MachineSpec) -> MachineStatus:
        self.domain_xml(spec)  # validates before anything touches a host
        if self.readiness == "phone_home" and self.seed and not spec.ready_url:
            raise PermanentBackendError(
                f"libvirt: readiness phone_home needs the machine's ready_url ({spec.machine_id})"
            )
        uri = self.uri_for(spec)
        where = self._where(spec.machine_id)
        if where is not None and where[0] != uri:
            elsewhere = self.describe(spec.machine_id)
            if elsewhere.state != ObservedState.MISSING:
                return elsewhere
        lv = _libvirt()
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, spec.machine_id)
            if dom is not None:
                return self._status(lv, dom, uri, spec.host_name)
            # Placement first: a domain is never defined without the portal knowing where.
            self._place(spec, uri)
            try:
                pool = self._pool(lv, conn)
                if self._volume(lv, conn, spec.machine_id) is None:
                    pool.createXML(self.volume_xml(spec), 0)
                if self.seed:
                    self._upload_seed(lv, conn, pool, spec)
                dom = conn.defineXML(self.domain_xml(spec, ssh_port=self._free_ssh_port(conn)))
                dom.create()
            except BackendError as exc:
                if not isinstance(exc, TransientBackendError):
                    self._discard(lv, conn, spec.machine_id)
                raise
            except lv.libvirtError as exc:
                error = translate_error(lv, exc, f"{uri}: create {spec.machine_id}")
                if not isinstance(error, TransientBackendError):
                    self._discard(lv, conn, spec.machine_id)
                raise error from exc
            return self._status(lv, dom, uri, spec.host_name)

    def _discard(self, lv, conn, machine_id: str) -> None:
        """Best effort: remove what a failed create left (domain, disk, placement)."""
        try:
            dom = _lookup(lv, conn, machine_id)
            if dom is not None:
                if dom.isActive():
                    self._destroy(lv, dom)
                self._undefine(lv, dom)
            volume = self._volume(lv, conn, machine_id)
            if volume is not None:
                volume.delete(0)
            if self.seed:
                self._delete_seed(lv, conn, machine_id)
            LibvirtPlacement.objects.filter(machine_id=machine_id).delete()
        except lv.libvirtError:
            logger.warning(
                "could not clean up after the failed create of %s", machine_id, exc_info=True
            )

    def start(self, spec: MachineSpec) -> MachineStatus:
        self.validate(spec)
        uri = self.uri_for(spec)
        where = self._where(spec.machine_id)
        if where is None:
            return self._missing(spec.machine_id)
        lv = _libvirt()
        old_uri, old_host = where
        if old_uri != uri:
            # A move: the disk must be visible on the new host, and the machine off on the old one.
            with self._connect(uri) as conn:
                if (
                    _lookup(lv, conn, spec.machine_id) is None
                    and self._volume(lv, conn, spec.machine_id) is None
                ):
                    raise PermanentBackendError(
                        f"libvirt: the boot disk of {spec.machine_id} ({self.disk_path(spec.machine_id)}) "
                        f"is not visible on {uri}; moving a machine needs {self.image_dir} on shared storage"
                    )
            with self._connect(old_uri) as conn:
                dom = _lookup(lv, conn, spec.machine_id)
                if dom is not None and dom.isActive():
                    return self._status(lv, dom, old_uri, old_host)
                if dom is not None:
                    self._undefine(lv, dom)  # the disk stays
            self._place(spec, uri)
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, spec.machine_id)
            if dom is None:
                if self._volume(lv, conn, spec.machine_id) is None:
                    return self._missing(spec.machine_id, spec.host_name)
                # the definition was lost (or stayed on the old host); the disk was not
                dom = conn.defineXML(self.domain_xml(spec, ssh_port=self._free_ssh_port(conn)))
            elif dom.isActive():
                return self._status(lv, dom, uri, spec.host_name)
            else:
                defined = DefinedMachine.parse(dom.XMLDesc(0))
                gpus = sorted(self.validate(spec)) if self.attach_gpus else []
                wanted = (gpus, spec.vcpus, spec.ram_gib * KIB_PER_GIB)
                if (sorted(defined.gpus), defined.vcpus, defined.memory_kib) != wanted:
                    port = int(defined.metadata.get("ssh-port") or 0)
                    dom = conn.defineXML(
                        self.domain_xml(spec, uuid=dom.UUIDString(), ssh_port=port)
                    )
            if self.seed and not self._has_seed(lv, conn, spec.machine_id):
                # same instance id, so cloud-init does not run its first-boot steps again
                self._upload_seed(lv, conn, self._pool(lv, conn), spec)
            if uri == old_uri and spec.host_name != old_host:
                self._place(spec, uri)
            dom.create()
            return self._status(lv, dom, uri, spec.host_name)

    def stop(self, machine_id: str) -> MachineStatus:
        where = self._where(machine_id)
        if where is None:
            return self._missing(machine_id)
        uri, host_name = where
        lv = _libvirt()
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, machine_id)
            if dom is None:
                return self._missing(machine_id, host_name)
            forced = False
            if dom.isActive():
                forced = self._shut_down(lv, dom)
            return self._status(lv, dom, uri, host_name, forced_off=forced)

    def _shut_down(self, lv, dom) -> bool:
        """ACPI shutdown, then destroy once the timeout has passed. True if it was destroyed."""
        state, _reason = dom.state()
        if state != lv.VIR_DOMAIN_PAUSED:  # a paused guest cannot hear the shutdown request
            try:
                dom.shutdown()
            except lv.libvirtError:
                if not dom.isActive():
                    return False
                raise
            deadline = time.monotonic() + self.shutdown_timeout_seconds
            while dom.isActive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(POLL_SECONDS, remaining))
            if not dom.isActive():
                return False
        logger.info(
            "destroying %s: it did not power off within %ss",
            dom.name(),
            self.shutdown_timeout_seconds,
        )
        self._destroy(lv, dom)
        return True

    def reboot(self, machine_id: str) -> MachineStatus:
        where = self._where(machine_id)
        if where is None:
            return self._missing(machine_id)
        uri, host_name = where
        lv = _libvirt()
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, machine_id)
            if dom is None:
                return self._missing(machine_id, host_name)
            if not dom.isActive():
                raise PermanentBackendError(
                    f"libvirt: {machine_id} is not running; start it instead"
                )
            dom.reboot(0)
            return self._status(lv, dom, uri, host_name)

    def terminate(self, machine_id: str) -> MachineStatus:
        where = self._where(machine_id)
        if where is None:
            return MachineStatus(machine_id=machine_id, state=ObservedState.TERMINATED)
        uri, host_name = where
        lv = _libvirt()
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, machine_id)
            if dom is not None:
                if dom.isActive():
                    self._destroy(lv, dom)
                self._undefine(lv, dom)
            volume = self._volume(lv, conn, machine_id)
            if volume is not None:
                volume.delete(0)
            if self.seed:
                self._delete_seed(lv, conn, machine_id)
        LibvirtPlacement.objects.filter(machine_id=machine_id).delete()
        return MachineStatus(
            machine_id=machine_id, state=ObservedState.TERMINATED, host_name=host_name
        )

    def describe(self, machine_id: str) -> MachineStatus:
        where = self._where(machine_id)
        if where is None:
            return self._missing(machine_id)
        uri, host_name = where
        lv = _libvirt()
        with self._connect(uri) as conn:
            dom = _lookup(lv, conn, machine_id)
            if dom is None:
                return self._missing(machine_id, host_name)
            return self._status(lv, dom, uri, host_name)

    def list_machines(self) -> list[MachineStatus]:
        placements = dict(LibvirtPlacement.objects.values_list("machine_id", "uri"))
        hosts = dict(LibvirtPlacement.objects.values_list("machine_id", "host_name"))
        uris = set(placements.values())
        if self._single_uri is not None:
            uris.add(self._single_uri)
        lv = _libvirt() if uris else None
        statuses = []
        for uri in sorted(uris):
            with self._connect(uri) as conn:
                for dom in conn.listAllDomains(0):
                    try:
                        defined = DefinedMachine.parse(dom.XMLDesc(0))
                        if not defined.is_portal_machine:
                            continue
                        machine_id = dom.name()
                        if placements.get(machine_id, uri) != uri:
                            logger.warning(
                                "%s on %s is a leftover: it runs on %s",
                                machine_id,
                                uri,
                                placements[machine_id],
                            )
                            continue
                        statuses.append(
                            self._status(lv, dom, uri, hosts.get(machine_id, ""), defined)
                        )
                    except lv.libvirtError as exc:
                        if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN:  # gone meanwhile
                            raise
        return sorted(statuses, key=lambda status: status.machine_id)
