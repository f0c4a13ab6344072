"""The simulated backend: lifecycle with times, idempotency, addresses, failure magic, persistence."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connections

from portal.provisioning.base import (
    CapacityError,
    ObservedState,
    PermanentBackendError,
    TransientBackendError,
)
from portal.provisioning.models import SimulatedCreateAttempt, SimulatedMachine
from portal.provisioning.simulated import SimulatedBackend, simulate_crash, simulate_loss
from tests.factories.provisioning import gpu, spec

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BOOT, STOP = 60, 20
S = ObservedState


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(T0, tick=False)

    def advance(seconds: float) -> None:
        time_machine.shift(timedelta(seconds=seconds))

    return advance


@pytest.fixture
def backend():
    # a /29 has hosts .1 to .6; .1 is the gateway, so five machines fit
    return SimulatedBackend(boot_seconds=BOOT, stop_seconds=STOP, ip_network="10.64.0.0/29")


def test_full_lifecycle_takes_the_configured_times(backend, clock):
    s = spec()
    created = backend.create(s)
    assert created.state == S.PROVISIONING
    assert created.ip_addresses == ("10.64.0.2",)
    assert created.host_name == "gpu-host-1"
    assert created.detail["transition_ready_at"] == (T0 + timedelta(seconds=BOOT)).isoformat()
    assert created.detail["gpu_pci_bus_ids"] == ["00000000:18:00.0", "00000000:2A:00.0"]

    clock(BOOT - 1)
    assert backend.describe(s.machine_id).state == S.PROVISIONING
    clock(1)
    running = backend.describe(s.machine_id)
    assert running.state == S.RUNNING
    assert running.detail["transition_ready_at"] is None

    assert backend.stop(s.machine_id).state == S.STOPPING
    clock(STOP - 1)
    assert backend.describe(s.machine_id).state == S.STOPPING
    clock(1)
    stopped = backend.describe(s.machine_id)
    assert stopped.state == S.STOPPED
    assert stopped.ip_addresses == ("10.64.0.2",)  # the address is kept while stopped

    # Started again on another host with another GPU.
    moved = spec(machine_id=s.machine_id, host_name="gpu-host-7", gpus=(gpu("00000000:9B:00.0"),))
    starting = backend.start(moved)
    assert starting.state == S.PROVISIONING
    assert starting.host_name == "gpu-host-7"
    assert starting.detail["gpu_pci_bus_ids"] == ["00000000:9B:00.0"]
    clock(BOOT)
    assert backend.describe(s.machine_id).state == S.RUNNING

    assert backend.reboot(s.machine_id).state == S.REBOOTING
    clock(BOOT - 1)
    assert backend.describe(s.machine_id).state == S.REBOOTING
    clock(1)
    assert backend.describe(s.machine_id).state == S.RUNNING

    terminated = backend.terminate(s.machine_id)
    assert terminated.state == S.TERMINATED
    assert terminated.ip_addresses == ()
    assert backend.describe(s.machine_id).state == S.TERMINATED
    assert backend.list_machines() == []


def test_every_call_is_idempotent(backend, clock):
    s = spec()
    first = backend.create(s)
    clock(10)
    assert backend.create(s) == first  # same machine, same deadline, nothing new
    assert SimulatedMachine.objects.count() == 1
    clock(BOOT)
    assert backend.create(s).state == S.RUNNING

    assert backend.start(s).state == S.RUNNING  # already running: nothing changes
    assert backend.reboot(s.machine_id).state == S.REBOOTING
    clock(10)
    rebooting = backend.reboot(s.machine_id)
    assert (
        rebooting.detail["transition_ready_at"]
        == (T0 + timedelta(seconds=10 + BOOT + BOOT)).isoformat()
    )
    clock(BOOT)

    stopping = backend.stop(s.machine_id)
    clock(5)
    assert backend.stop(s.machine_id) == stopping  # the deadline does not move
    clock(STOP)
    assert backend.stop(s.machine_id).state == S.STOPPED
    assert backend.stop(s.machine_id).state == S.STOPPED

    assert backend.start(s).state == S.PROVISIONING
    clock(5)
    again = backend.start(s)
    assert again.state == S.PROVISIONING
    assert (
        again.detail["transition_ready_at"]
        == (T0 + timedelta(seconds=10 + BOOT + 10 + BOOT + 5 + STOP + BOOT)).isoformat()
    )

    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    # A terminated machine stays terminated: no call brings it back.
    assert backend.create(s).state == S.TERMINATED
    assert backend.start(s).state == S.TERMINATED
    assert backend.stop(s.machine_id).state == S.TERMINATED
    assert backend.reboot(s.machine_id).state == S.TERMINATED
    assert SimulatedMachine.objects.count() == 1


def test_unknown_machines(backend):
    s = spec()
    assert backend.describe(s.machine_id).state == S.MISSING
    assert backend.stop(s.machine_id).state == S.MISSING
    assert backend.reboot(s.machine_id).state == S.MISSING
    assert backend.start(s).state == S.MISSING
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert SimulatedMachine.objects.count() == 0


def test_calls_that_do_not_fit_the_state(backend, clock):
    s = spec()
    backend.create(s)
    clock(BOOT)
    backend.stop(s.machine_id)
    with pytest.raises(TransientBackendError, match="still stopping"):
        backend.start(s)
    with pytest.raises(PermanentBackendError, match="start it"):
        backend.reboot(s.machine_id)
    clock(STOP)
    with pytest.raises(PermanentBackendError, match="start it"):
        backend.reboot(s.machine_id)
    backend.start(s)
    clock(BOOT)
    simulate_crash(s.machine_id)
    with pytest.raises(PermanentBackendError, match="in error"):
        backend.start(s)
    # Stopping a machine in error works, and it starts again from there.
    backend.stop(s.machine_id)
    clock(STOP)
    backend.start(s)
    clock(BOOT)
    assert backend.describe(s.machine_id).state == S.RUNNING


def test_stop_while_booting(backend, clock):
    s = spec()
    backend.create(s)
    clock(BOOT / 2)
    assert backend.stop(s.machine_id).state == S.STOPPING
    clock(BOOT)  # the boot's old deadline passes; the machine stays stopping, then stopped
    assert backend.describe(s.machine_id).state == S.STOPPED


def test_addresses_are_unique_and_freed_on_terminate(backend, clock):
    specs = [spec() for _ in range(5)]
    addresses = [backend.create(s).ip_addresses[0] for s in specs]
    assert addresses == [f"10.64.0.{n}" for n in range(2, 7)]  # .1 is the gateway
    with pytest.raises(CapacityError, match="no free address"):
        backend.create(spec())
    clock(BOOT)
    backend.stop(specs[1].machine_id)  # stopping does not free the address
    with pytest.raises(CapacityError):
        backend.create(spec())
    backend.terminate(specs[2].machine_id)
    newcomer = backend.create(spec())
    assert newcomer.ip_addresses == ("10.64.0.4",)
    live = [status.ip_addresses[0] for status in backend.list_machines()]
    assert len(live) == len(set(live)) == 5


def test_list_machines_settles_and_skips_terminated(backend, clock):
    a, b, c = spec(), spec(), spec()
    backend.create(a)
    clock(BOOT)
    backend.create(b)
    backend.create(c)
    backend.terminate(c.machine_id)
    listed = backend.list_machines()
    assert [(m.machine_id, m.state) for m in listed] == sorted(
        [(a.machine_id, S.RUNNING), (b.machine_id, S.PROVISIONING)]
    )
    clock(BOOT)
    assert {m.state for m in backend.list_machines()} == {S.RUNNING}
    assert SimulatedMachine.objects.get(machine_id=b.machine_id).state == S.RUNNING  # written back


def test_state_lives_in_the_database(backend, clock):
    s = spec()
    backend.create(s)
    other_worker = SimulatedBackend(boot_seconds=BOOT, stop_seconds=STOP, ip_network="10.64.0.0/29")
    assert other_worker.describe(s.machine_id).state == S.PROVISIONING
    clock(BOOT)
    assert [m.machine_id for m in other_worker.list_machines()] == [s.machine_id]
    assert other_worker.stop(s.machine_id).state == S.STOPPING
    clock(STOP)
    assert backend.describe(s.machine_id).state == S.STOPPED


# --- failure magic ------------------------------------------------------------------------


def test_transient_failures_then_success_counted_in_the_database(backend, clock):
    s = spec(name="sim-transient-2 box")
    with pytest.raises(TransientBackendError):
        backend.create(s)
    with pytest.raises(TransientBackendError):
        SimulatedBackend(boot_seconds=BOOT).create(s)  # another worker sees the same count
    assert SimulatedCreateAttempt.objects.get(machine_id=s.machine_id).attempts == 2
    assert SimulatedMachine.objects.count() == 0
    assert backend.create(s).state == S.PROVISIONING
    assert backend.create(s).state == S.PROVISIONING  # created: the count no longer matters


def test_magic_in_user_data_counts_too(backend):
    s = spec(user_data="#cloud-config\n# SIM-TRANSIENT-1\n")
    with pytest.raises(TransientBackendError):
        backend.create(s)
    assert backend.create(s).state == S.PROVISIONING


@pytest.mark.parametrize(
    ("magic", "error"), [("sim-capacity", CapacityError), ("sim-permanent", PermanentBackendError)]
)
def test_create_failures(backend, magic, error):
    s = spec(name=f"box {magic}")
    for _ in range(3):
        with pytest.raises(error):
            backend.create(s)
    assert SimulatedMachine.objects.count() == 0
    assert backend.describe(s.machine_id).state == S.MISSING


def test_hang_boots_forever(backend, clock):
    s = spec(name="sim-hang")
    assert backend.create(s).state == S.PROVISIONING
    clock(7 * 24 * 3600)
    status = backend.describe(s.machine_id)
    assert status.state == S.PROVISIONING
    assert status.detail["transition_ready_at"] is None
    assert backend.stop(s.machine_id).state == S.STOPPING  # it can be given up on
    clock(STOP)
    assert backend.describe(s.machine_id).state == S.STOPPED
    assert backend.start(s).state == S.PROVISIONING
    clock(3600)
    assert backend.describe(s.machine_id).state == S.PROVISIONING
    assert backend.terminate(s.machine_id).state == S.TERMINATED


def test_crash_after_booting_then_reboot_recovers(backend, clock):
    s = spec(name="sim-crash")
    backend.create(s)
    clock(BOOT)
    assert backend.describe(s.machine_id).state == S.RUNNING
    clock(BOOT - 1)
    assert backend.describe(s.machine_id).state == S.RUNNING
    clock(1)
    assert backend.describe(s.machine_id).state == S.ERROR
    assert backend.reboot(s.machine_id).state == S.REBOOTING
    clock(BOOT)
    assert backend.describe(s.machine_id).state == S.RUNNING
    clock(24 * 3600)
    assert backend.describe(s.machine_id).state == S.RUNNING  # it crashes once


def test_crash_is_seen_even_when_nobody_looked_while_it_ran(backend, clock):
    s = spec(name="sim-crash")
    backend.create(s)
    clock(10 * BOOT)
    assert backend.describe(s.machine_id).state == S.ERROR


def test_simulated_loss(backend, clock):
    s, other = spec(), spec()
    backend.create(s)
    backend.create(other)
    clock(BOOT)
    assert simulate_loss(s.machine_id) is True
    assert backend.describe(s.machine_id).state == S.MISSING
    assert [m.machine_id for m in backend.list_machines()] == [other.machine_id]
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert simulate_loss(s.machine_id) is False


def test_simulated_crash(backend, clock):
    s = spec()
    backend.create(s)
    clock(BOOT)
    assert simulate_crash(s.machine_id) is True
    assert backend.describe(s.machine_id).state == S.ERROR
    backend.terminate(s.machine_id)
    assert simulate_crash(s.machine_id) is False


def test_bad_options_are_refused():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="ip_network"):
        SimulatedBackend(ip_network="10.64.0.0/33")
    with pytest.raises(ImproperlyConfigured, match="boot_seconds"):
        SimulatedBackend(boot_seconds=-1)
    with pytest.raises(ImproperlyConfigured, match="too small"):
        SimulatedBackend(ip_network="10.0.0.0/31")


# --- concurrency (PostgreSQL, real threads) -----------------------------------------------


def run_in_threads(count, target):
    barrier = threading.Barrier(count)
    results, errors = [None] * count, []

    def worker(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_machine_make_one_row(require_postgres):
    backend = SimulatedBackend(boot_seconds=BOOT, ip_network="10.64.0.0/24")
    s = spec()
    results, errors = run_in_threads(8, lambda i: backend.create(s))
    assert errors == []
    assert SimulatedMachine.objects.filter(machine_id=s.machine_id).count() == 1
    assert {r.machine_id for r in results} == {s.machine_id}
    assert {r.ip_addresses for r in results} == {("10.64.0.2",)}
    assert {r.state for r in results} == {S.PROVISIONING}


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_get_distinct_addresses(require_postgres):
    backend = SimulatedBackend(boot_seconds=BOOT, ip_network="10.64.0.0/24")
    specs = [spec() for _ in range(8)]
    results, errors = run_in_threads(8, lambda i: backend.create(specs[i]))
    assert errors == []
    addresses = [r.ip_addresses[0] for r in results]
    assert sorted(addresses, key=lambda a: int(a.rsplit(".", 1)[1])) == [
        f"10.64.0.{n}" for n in range(2, 10)
    ]


@pytest.mark.django_db(transaction=True)
def test_concurrent_stop_and_describe_are_consistent(require_postgres):
    backend = SimulatedBackend(boot_seconds=0, stop_seconds=BOOT, ip_network="10.64.0.0/24")
    s = spec()
    backend.create(s)
    assert backend.describe(s.machine_id).state == S.RUNNING
    results, errors = run_in_threads(
        8, lambda i: backend.stop(s.machine_id) if i % 2 else backend.describe(s.machine_id)
    )
    assert errors == []
    stops = {r.detail["transition_ready_at"] for i, r in enumerate(results) if i % 2}
    assert len(stops) == 1  # one stop began the transition; the others saw it
    assert backend.describe(s.machine_id).state == S.STOPPING
