"""A customer's cluster of 2 nodes x 8 H200 on the Slurm cluster, as one portal object."""

from datetime import timedelta

import pytest

from portal.catalog.capacity import CapacityUnavailable
from portal.compute.models import Cluster, Instance, InstanceEvent
from portal.compute.services import instance_action
from portal.compute.services.clusters import cluster_launch, cluster_sync, cluster_terminate
from portal.errors import Conflict
from portal.metering.lifecycle_usage import COMPUTE, instance_usage, seconds
from tests.slurm.conftest import REGION
from tests.slurm.test_portal import world  # noqa: F401 - the fixture


@pytest.fixture(autouse=True)
def room_for_clusters(settings):
    settings.DEFAULT_GPU_QUOTA = 64  # the whole test cluster: 4 nodes x 8 GPUs, twice over


def launch(world, name, nodes):  # noqa: F811
    key_ids = tuple(world.request(name, "gpu_8x_h200").ssh_key_ids)
    return cluster_launch(
        actor=world.actor(),
        name=name,
        instance_type="gpu_8x_h200",
        region=REGION,
        node_count=nodes,
        ssh_key_ids=key_ids,
    )


def running_jobs(slurm):
    return [j for j in slurm.rest("GET", "jobs")["jobs"] if j["job_state"] == "RUNNING"]


def test_a_two_node_cluster_runs_all_or_nothing_and_ends_as_one(world, slurm):  # noqa: F811
    cluster = launch(world, "train", 2)
    members = list(Instance.objects.filter(cluster=cluster))
    assert [m.state for m in members] == ["pending", "pending"]

    assert cluster_sync(cluster_id=cluster.pk) == "running"
    cluster.refresh_from_db()
    jobs = running_jobs(slurm)
    assert len(jobs) == 1 and jobs[0]["node_count"] == 2
    members = list(Instance.objects.filter(cluster=cluster).order_by("pk"))
    assert {m.state for m in members} == {"running"}
    running_at = {
        e.created_at
        for e in InstanceEvent.objects.filter(instance__cluster=cluster, to_state="running")
    }
    assert running_at == {cluster.running_since}  # one moment for every node
    assert cluster_sync(cluster_id=cluster.pk) == "running"  # safe to run twice
    assert len(running_jobs(slurm)) == 1

    # the other two nodes hold the portal's capacity: a third 2-node request is refused whole
    before = (
        Cluster.objects.count(),
        Instance.objects.count(),
        len(slurm.rest("GET", "jobs")["jobs"]),
    )
    launch(world, "also", 2)  # 2 nodes are still free
    with pytest.raises(CapacityUnavailable) as refused:
        launch(world, "third", 2)
    assert refused.value.code == "capacity_unavailable"
    assert Cluster.objects.filter(name="third").count() == 0
    assert not Instance.objects.filter(name__startswith="third-").exists()
    assert len(slurm.rest("GET", "jobs")["jobs"]) == before[2]

    for action in ("terminate", "stop"):  # a node goes only with its cluster
        with pytest.raises(Conflict) as refused:
            instance_action(actor=world.actor(), instance_id=members[0].pk, action=action)
        assert refused.value.code == "cluster_member"
    assert Instance.objects.get(pk=members[0].pk).state == "running"

    cluster_terminate(actor=world.actor(), cluster_id=cluster.pk)
    assert cluster_sync(cluster_id=cluster.pk) == "terminated"
    members = list(Instance.objects.filter(cluster=cluster))
    assert {m.state for m in members} == {"terminated"}
    assert all(m.allocation_id is None for m in members)
    slurm.wait_until(
        lambda: (
            not [
                j
                for j in running_jobs(slurm)
                if "train" in j["name"] or str(cluster.pk) in j["name"]
            ]
        )
    )

    # each member is billed per second from the moment every node was allocated to its end
    for member in members:
        events = list(member.events.order_by("created_at", "pk"))
        ended = next(e.created_at for e in events if e.to_state == "terminating")
        usage = instance_usage(
            [(e.created_at, e.to_state) for e in events if e.to_state],
            disk_gb=member.disk_gb,
            window_start=cluster.created_at - timedelta(hours=1),
            window_end=ended + timedelta(hours=1),
        )
        billed = sum(v for (meter, _h, _p), v in usage.items() if meter == COMPUTE)
        assert billed == seconds(ended - cluster.running_since) > 0


def test_slurm_refusing_the_cluster_fails_it_whole(world, slurm):  # noqa: F811
    # another job holds a node Slurm-side, unseen by the portal: Slurm says there are 3 free
    held = slurm.rest(
        "POST",
        "job/submit",
        {
            "job": {
                "name": "other-user", "partition": "gpu", "nodes": "1", "exclusive": "user",
                "gpus_per_node": "h200:8", "environment": {"PATH": "/bin:/usr/bin"},
                "current_working_directory": "/tmp", "standard_output": "/dev/null",
            },
            "script": "#!/bin/sh\nexec sleep 300\n",
        },
    )  # fmt: skip
    slurm.wait_for_job(held["job_id"], "RUNNING")
    cluster = launch(world, "big", 4)
    assert cluster_sync(cluster_id=cluster.pk) == "failed"
    members = list(Instance.objects.filter(cluster=cluster))
    assert {m.state for m in members} == {"failed"}
    assert all(m.allocation_id is None for m in members)
    event = InstanceEvent.objects.filter(instance__cluster=cluster, to_state="failed").first()
    assert event.detail["code"] == "capacity_unavailable"
    assert event.detail["free_nodes"] == 3
    assert [j["name"] for j in running_jobs(slurm)] == ["other-user"]


def test_a_cluster_over_the_gpu_quota_is_refused_whole(world, slurm):  # noqa: F811
    """Each node is checked as a launch is, counting the nodes before it: 16 GPUs with a quota
    of 8 is refused, and nothing is written."""
    from portal.compute.errors import QuotaExceeded
    from portal.compute.models import Quota

    Quota.objects.create(organization=world.org, max_gpus=8)
    with pytest.raises(QuotaExceeded):
        launch(world, "too-big", 2)
    assert not Cluster.objects.exists() and not Instance.objects.exists()
    assert running_jobs(slurm) == []
    assert launch(world, "fits", 1).node_count == 1  # one node is within the quota
