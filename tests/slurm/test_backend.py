"""The slurm backend against the real cluster: instances as held allocations, clusters of
nodes allocated all at once or not at all."""

import time

import pytest

from portal.provisioning.base import GpuDevice, ObservedState
from portal.provisioning.slurm import ClusterSpec, SlurmCapacityError, UnsupportedOperation
from tests.factories.provisioning import spec
from tests.slurm.conftest import H200

ALL = list(range(8))


def gpus(count: int) -> tuple[GpuDevice, ...]:
    return tuple(GpuDevice(uuid=f"slurm-gpu-{i}", pci_bus_id=f"slurm:{i}") for i in range(count))


def settle(backend, machine_id: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        status = backend.describe(machine_id)
        if status.state != ObservedState.PROVISIONING or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def jobs_named(slurm, name: str) -> list[dict]:
    return [
        j
        for j in slurm.rest("GET", "jobs")["jobs"]
        if j["name"] == name and j["job_state"] in ("PENDING", "RUNNING", "CONFIGURING")
    ]


def test_an_eight_gpu_instance_is_a_whole_node_held_until_terminated(slurm_backend, slurm):
    machine = spec(host_name="gpu2", gpus=gpus(8), vcpus=32, ram_gib=200)
    created = slurm_backend.create(machine)
    assert created.state in (ObservedState.PROVISIONING, ObservedState.RUNNING)
    status = settle(slurm_backend, machine.machine_id)
    assert status.state == ObservedState.RUNNING
    assert status.host_name == "gpu2"
    assert status.detail["gpus"] == {"gpu2": ALL}
    assert status.detail["slurm_state"] == "RUNNING"
    job = slurm.rest("GET", f"job/{status.detail['slurm_job_id']}")["jobs"][0]
    assert job["name"] == f"portal-{machine.machine_id}"
    assert job["cpus"] == 32  # exclusive: the whole node
    assert slurm_backend.create(machine).detail["slurm_job_id"] == job["job_id"]  # idempotent
    assert len(jobs_named(slurm, job["name"])) == 1
    listed = {m.machine_id: m for m in slurm_backend.list_machines()}
    assert listed[machine.machine_id].state == ObservedState.RUNNING

    ended = slurm_backend.terminate(machine.machine_id)
    assert ended.state == ObservedState.TERMINATED
    assert settle(slurm_backend, machine.machine_id).state == ObservedState.TERMINATED
    assert slurm_backend.terminate(machine.machine_id).state == ObservedState.TERMINATED
    assert machine.machine_id not in {m.machine_id for m in slurm_backend.list_machines()}


def test_a_two_gpu_instance_shares_its_node_with_the_gpus_slurm_chose(slurm_backend, slurm):
    machine = spec(host_name="gpu3", gpus=gpus(2), vcpus=4, ram_gib=16)
    slurm_backend.create(machine)
    status = settle(slurm_backend, machine.machine_id)
    assert status.state == ObservedState.RUNNING
    assert status.detail["gpus"] == {"gpu3": [0, 1]}
    job = slurm.rest("GET", f"job/{status.detail['slurm_job_id']}")["jobs"][0]
    assert job["cpus"] == 4
    assert "mem=16G" in job["tres_alloc_str"]
    node = next(n for n in slurm_backend.nodes() if n.name == "gpu3")
    assert node.gpus_used == (0, 1)


def test_stop_start_and_reboot_are_refused_not_faked(slurm_backend):
    machine = spec(host_name="gpu1", gpus=gpus(8))
    assert slurm_backend.unsupported_actions == {"stop", "start", "reboot"}
    for call in (
        lambda: slurm_backend.stop(machine.machine_id),
        lambda: slurm_backend.start(machine),
        lambda: slurm_backend.reboot(machine.machine_id),
    ):
        with pytest.raises(UnsupportedOperation, match="Terminate it instead"):
            call()


def test_an_unknown_machine_is_missing_and_terminating_it_succeeds(slurm_backend):
    assert slurm_backend.describe("inst-never").state == ObservedState.MISSING
    assert slurm_backend.terminate("inst-never").state == ObservedState.TERMINATED


def test_a_node_that_is_not_in_the_cluster_is_refused(slurm_backend):
    from portal.provisioning.base import PermanentBackendError

    with pytest.raises(PermanentBackendError, match="no node gpu9"):
        slurm_backend.create(spec(host_name="gpu9", gpus=gpus(8)))


def test_clusters_are_allocated_all_at_once_and_a_third_is_refused(slurm_backend, slurm):
    first = slurm_backend.create_cluster(ClusterSpec("cluster-a", "train-a", 2, H200))
    second = slurm_backend.create_cluster(ClusterSpec("cluster-b", "train-b", 2, H200))
    for made in (first, second):
        assert made.state == ObservedState.RUNNING
        assert len(made.nodes) == 2
        assert all(indexes == tuple(ALL) for indexes in made.nodes.values())
        assert made.started_at  # billing starts when every node is allocated
    assert set(first.nodes) | set(second.nodes) == {"gpu1", "gpu2", "gpu3", "gpu4"}

    with pytest.raises(SlurmCapacityError) as refused:
        slurm_backend.create_cluster(ClusterSpec("cluster-c", "train-c", 2, H200))
    assert (refused.value.requested_nodes, refused.value.free_nodes) == (2, 0)
    assert "0 are free" in str(refused.value)
    assert jobs_named(slurm, "portal-cluster:cluster-c") == []  # nothing held, nothing queued
    assert not slurm_backend.list_machines()  # clusters are not machines

    # the same request again is the same cluster
    again = slurm_backend.create_cluster(ClusterSpec("cluster-a", "train-a", 2, H200))
    assert again.detail["slurm_job_id"] == first.detail["slurm_job_id"]

    assert slurm_backend.terminate_cluster("cluster-a").state == ObservedState.TERMINATED
    slurm.wait_until(lambda: len([n for n in slurm_backend.nodes() if n.wholly_free]) == 2)
    third = slurm_backend.create_cluster(ClusterSpec("cluster-c", "train-c", 2, H200))
    assert third.state == ObservedState.RUNNING
    assert set(third.nodes) == set(first.nodes)


def test_a_cluster_larger_than_what_is_free_is_refused_before_slurm_is_asked(slurm_backend, slurm):
    slurm_backend.create(spec(machine_id="inst-one-gpu", host_name="gpu4", gpus=gpus(1), vcpus=2))
    assert settle(slurm_backend, "inst-one-gpu").state == ObservedState.RUNNING
    with pytest.raises(SlurmCapacityError) as refused:
        slurm_backend.create_cluster(ClusterSpec("cluster-big", "big", 4, H200))
    assert (refused.value.requested_nodes, refused.value.free_nodes) == (4, 3)
    assert jobs_named(slurm, "portal-cluster:cluster-big") == []


def test_a_cluster_another_job_beats_to_the_nodes_is_cancelled_not_left_pending(
    slurm_backend, slurm, monkeypatch
):
    """The nodes looked free, but another job took one before Slurm could allocate ours."""
    real_nodes = slurm_backend.nodes
    snapshot = real_nodes()  # all four free
    monkeypatch.setattr(slurm_backend, "nodes", lambda: snapshot)
    slurm_backend.create(spec(machine_id="inst-sneak", host_name="gpu1", gpus=gpus(8)))
    assert settle(slurm_backend, "inst-sneak").state == ObservedState.RUNNING
    with pytest.raises(SlurmCapacityError):
        slurm_backend.create_cluster(ClusterSpec("cluster-late", "late", 4, H200))
    assert jobs_named(slurm, "portal-cluster:cluster-late") == []
    monkeypatch.setattr(slurm_backend, "nodes", real_nodes)


def test_a_job_slurmctld_has_forgotten_is_read_from_accounting(slurm_backend, monkeypatch):
    machine = spec(host_name="gpu1", gpus=gpus(1), vcpus=1, ram_gib=4)
    slurm_backend.create(machine)
    assert settle(slurm_backend, machine.machine_id).state == ObservedState.RUNNING
    slurm_backend.terminate(machine.machine_id)
    # after MinJobAge slurmctld no longer lists an ended job; slurmdbd still has it
    monkeypatch.setattr(slurm_backend, "_jobs_named", lambda name: [])
    deadline = time.monotonic() + 30  # slurmdbd is slow to write on a busy machine
    # slurmdbd records the end a moment after slurmctld (this test asks at once)
    while (status := slurm_backend.describe(machine.machine_id)).state != ObservedState.TERMINATED:
        assert time.monotonic() < deadline, f"slurmdbd says the job is {status.state}"
        time.sleep(0.2)
    assert status.state == ObservedState.TERMINATED
    assert status.detail["slurm_state"] == "CANCELLED"
    assert status.host_name == "gpu1"


def test_an_instance_whose_gpus_another_job_took_fails_instead_of_queueing(slurm_backend, slurm):
    from portal.provisioning.base import CapacityError
    from tests.slurm.test_inventory import hold_gpus

    hold_gpus(slurm, "gpu2", 7)  # someone else, after the portal placed 2 GPUs on gpu2
    machine = spec(host_name="gpu2", gpus=gpus(2), vcpus=2, ram_gib=8)
    with pytest.raises(CapacityError, match="other jobs hold them"):
        slurm_backend.create(machine)
    assert jobs_named(slurm, f"portal-{machine.machine_id}") == []
    assert slurm_backend.describe(machine.machine_id).state == ObservedState.TERMINATED


def test_an_ended_cluster_is_read_from_accounting_too(slurm_backend, monkeypatch):
    made = slurm_backend.create_cluster(ClusterSpec("cluster-old", "old", 1, H200))
    assert made.state == ObservedState.RUNNING
    slurm_backend.terminate_cluster("cluster-old")
    monkeypatch.setattr(slurm_backend, "_jobs_named", lambda name: [])  # slurmctld forgot it
    deadline = time.monotonic() + 30  # slurmdbd is slow to write on a busy machine
    # slurmdbd records the end a moment after slurmctld (this test asks at once)
    while (
        status := slurm_backend.describe_cluster("cluster-old")
    ).state != ObservedState.TERMINATED:
        assert time.monotonic() < deadline, f"slurmdbd says the cluster is {status.state}"
        time.sleep(0.2)
    assert status.state == ObservedState.TERMINATED
    assert status.detail["slurm_job_id"] == made.detail["slurm_job_id"]
