"""Machine specs and GPU devices for the provisioning backends."""

import itertools
import uuid

from portal.provisioning.base import GpuDevice, MachineSpec

_seq = itertools.count(1)


def gpu(bus_id: str = "00000000:18:00.0", **kwargs) -> GpuDevice:
    return GpuDevice(uuid=kwargs.pop("uuid", f"GPU-{uuid.uuid4()}"), pci_bus_id=bus_id, **kwargs)


def spec(**overrides) -> MachineSpec:
    """A two-GPU machine spec with a machine id unique in this process."""
    values = {
        "machine_id": f"inst-{next(_seq)}-{uuid.uuid4().hex[:8]}",
        "name": "training-box",
        "host_name": "gpu-host-1",
        "vcpus": 16,
        "ram_gib": 128,
        "disk_gb": 200,
        "image": "ubuntu-2404-cuda-13",
        "gpus": (gpu("00000000:18:00.0"), gpu("00000000:2A:00.0")),
        "ssh_public_keys": ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 test@example",),
    }
    values.update(overrides)
    return MachineSpec(**values)
