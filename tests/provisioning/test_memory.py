"""The in-memory test double: instant transitions, recorded calls, the same magic values."""

import pytest

from portal.provisioning import get_backend
from portal.provisioning.base import (
    CapacityError,
    ObservedState,
    PermanentBackendError,
    TransientBackendError,
)
from portal.provisioning.simulated import BackendCall, InMemoryBackend
from tests.factories.provisioning import gpu, spec

S = ObservedState


def test_lifecycle_is_instant_and_every_call_is_recorded():
    backend = InMemoryBackend()
    s = spec()
    created = backend.create(s)
    assert created.state == S.RUNNING
    assert created.ip_addresses == ("10.65.0.2",)
    assert backend.create(s) == created
    assert backend.stop(s.machine_id).state == S.STOPPED
    assert backend.stop(s.machine_id).state == S.STOPPED
    with pytest.raises(PermanentBackendError):
        backend.reboot(s.machine_id)
    moved = spec(machine_id=s.machine_id, host_name="gpu-host-9", gpus=(gpu("00000000:3B:00.0"),))
    started = backend.start(moved)
    assert (started.state, started.host_name) == (S.RUNNING, "gpu-host-9")
    assert started.detail["gpu_pci_bus_ids"] == ["00000000:3B:00.0"]
    assert backend.reboot(s.machine_id).state == S.RUNNING
    assert [m.machine_id for m in backend.list_machines()] == [s.machine_id]
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert backend.terminate("never-made").state == S.TERMINATED
    assert backend.describe("never-made").state == S.MISSING
    assert backend.list_machines() == []
    assert [call.method for call in backend.calls] == [
        "create", "create", "stop", "stop", "reboot", "start", "reboot", "list_machines",
        "terminate", "terminate", "terminate", "describe", "list_machines",
    ]  # fmt: skip
    assert backend.calls[0] == BackendCall("create", s.machine_id, s)
    assert backend.calls[5].spec == moved


def test_magic_values():
    backend = InMemoryBackend()
    flaky = spec(name="sim-transient-2")
    for _ in range(2):
        with pytest.raises(TransientBackendError):
            backend.create(flaky)
    assert backend.create(flaky).state == S.RUNNING
    with pytest.raises(CapacityError):
        backend.create(spec(user_data="sim-capacity"))
    with pytest.raises(PermanentBackendError):
        backend.create(spec(name="sim-permanent"))
    hung = spec(name="sim-hang")
    assert backend.create(hung).state == S.PROVISIONING
    assert backend.describe(hung.machine_id).state == S.PROVISIONING
    crashing = spec(name="sim-crash")
    assert backend.create(crashing).state == S.RUNNING
    assert backend.describe(crashing.machine_id).state == S.ERROR
    assert backend.reboot(crashing.machine_id).state == S.RUNNING
    assert backend.describe(crashing.machine_id).state == S.RUNNING


def test_fail_next_loss_and_reset():
    backend = InMemoryBackend()
    s = spec()
    backend.create(s)
    backend.fail_next("stop", TransientBackendError("hypervisor busy"), times=2)
    for _ in range(2):
        with pytest.raises(TransientBackendError, match="busy"):
            backend.stop(s.machine_id)
    assert backend.stop(s.machine_id).state == S.STOPPED
    assert backend.simulate_loss(s.machine_id) is True
    assert backend.describe(s.machine_id).state == S.MISSING
    backend.reset()
    assert backend.calls == [] and backend.machines == {}


def test_addresses_are_unique_and_reused_after_terminate():
    backend = InMemoryBackend(ip_network="10.9.0.0/29")
    specs = [spec() for _ in range(5)]
    assert [backend.create(s).ip_addresses[0] for s in specs] == [
        f"10.9.0.{n}" for n in range(2, 7)
    ]
    with pytest.raises(CapacityError):
        backend.create(spec())
    backend.terminate(specs[0].machine_id)
    assert backend.create(spec()).ip_addresses == ("10.9.0.2",)


def test_configured_through_settings(settings):
    settings.PROVISIONING_BACKENDS = {
        "memory": {"BACKEND": "portal.provisioning.simulated.InMemoryBackend", "OPTIONS": {}}
    }
    settings.PROVISIONING_BACKEND = "memory"
    backend = get_backend()
    assert isinstance(backend, InMemoryBackend)
    assert get_backend() is backend  # one per process, so tests can look at its calls
    backend.create(spec())
    assert len(get_backend("memory").calls) == 1
