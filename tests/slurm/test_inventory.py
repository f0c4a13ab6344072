"""The portal's hosts mirror the Slurm cluster: nodes, GPU types and counts, state, use."""

import pytest

from portal.catalog import capacity
from portal.catalog.models import Allocation, GpuSlotClaim, Host, HostState, Region
from portal.catalog.slurm_sync import hosts_sync_slurm
from portal.errors import InvalidInput
from tests.factories import catalog
from tests.slurm.conftest import H200, REGION

NODES = ["gpu1", "gpu2", "gpu3", "gpu4"]


def hold_gpus(slurm, node: str, count: int) -> int:
    """A job of someone outside the portal, holding ``count`` GPUs of ``node``."""
    answer = slurm.rest(
        "POST",
        "job/submit",
        {
            "job": {
                "name": "someone-else",
                "partition": "gpu",
                "nodelist": node,
                "gpus_per_node": f"h200:{count}",
                "environment": {"PATH": "/bin:/usr/bin"},
                "current_working_directory": "/tmp",
                "standard_output": "/dev/null",
            },
            "script": "#!/bin/sh\nexec sleep 600\n",
        },
    )
    assert answer["errors"] == []
    slurm.wait_for_job(answer["job_id"], "RUNNING")
    return answer["job_id"]


def test_every_node_becomes_an_active_host_with_its_eight_h200(slurm_backend):
    result = hosts_sync_slurm()
    assert result.created == tuple(NODES)
    hosts = Host.objects.filter(managed_by="slurm").order_by("name")
    assert [h.name for h in hosts] == NODES
    for host in hosts:
        assert host.region.code == REGION
        assert host.state == HostState.ACTIVE
        assert (host.vcpus, host.ram_gib) == (32, 250)  # RealMemory=256000 MiB
        gpus = list(host.gpus.order_by("index"))
        assert [g.index for g in gpus] == list(range(8))
        assert {g.gpu_model.code for g in gpus} == {H200}
    h200 = catalog.gpu_models()[H200]
    eight = catalog.instance_type("gpu_8x_h200_slurm", h200, count=8, vcpus=32, ram_gib=200)
    region = Region.objects.get(code=REGION)
    assert capacity.placement(instance_type=eight, region=region) is not None


def test_syncing_again_changes_nothing(slurm_backend):
    hosts_sync_slurm()
    before = list(Host.objects.filter(managed_by="slurm").values_list("id", "state"))
    again = hosts_sync_slurm()
    assert (again.created, again.changed, again.offline) == ((), (), ())
    assert list(Host.objects.filter(managed_by="slurm").values_list("id", "state")) == before
    assert Host.objects.get(name="gpu1").gpus.count() == 8


def test_drained_and_down_nodes_stop_taking_instances_and_come_back(slurm_backend, slurm):
    hosts_sync_slurm()
    slurm.run("scontrol", "update", "nodename=gpu1", "state=drain", "reason=maintenance")
    slurm.run("scontrol", "update", "nodename=gpu2", "state=down", "reason=broken")
    result = hosts_sync_slurm()
    assert result.changed == ("gpu1", "gpu2")
    states = dict(Host.objects.filter(managed_by="slurm").values_list("name", "state"))
    assert states == {
        "gpu1": HostState.DRAINING,
        "gpu2": HostState.OFFLINE,
        "gpu3": HostState.ACTIVE,
        "gpu4": HostState.ACTIVE,
    }
    slurm.resume_all()
    hosts_sync_slurm()
    assert set(Host.objects.filter(managed_by="slurm").values_list("state", flat=True)) == {
        HostState.ACTIVE
    }


def test_gpus_others_use_in_slurm_are_held_and_given_back(slurm_backend, slurm):
    hosts_sync_slurm()
    h200 = catalog.gpu_models()[H200]
    eight = catalog.instance_type("gpu_8x_h200_slurm", h200, count=8, vcpus=32, ram_gib=200)
    region = Region.objects.get(code=REGION)
    job = hold_gpus(slurm, "gpu3", 2)
    result = hosts_sync_slurm()
    assert result.foreign_gpus == {"gpu3": 2}
    held = Allocation.objects.get(holder="slurm:gpu3", released_at__isnull=True)
    assert held.instance_type is None
    assert GpuSlotClaim.objects.filter(allocation=held).count() == 2 * 8
    # gpu3 no longer takes an 8-GPU instance: three nodes do
    taken = [
        capacity.allocation_reserve(instance_type=eight, region=region, holder=f"t:{n}").host.name
        for n in range(3)
    ]
    assert sorted(taken) == ["gpu1", "gpu2", "gpu4"]
    with pytest.raises(capacity.CapacityUnavailable):
        capacity.allocation_reserve(instance_type=eight, region=region, holder="t:3")
    assert hosts_sync_slurm().foreign_gpus == {"gpu3": 2}  # the same hold, not a new one
    assert Allocation.objects.filter(holder="slurm:gpu3").count() == 1
    slurm.rest("DELETE", f"job/{job}")
    slurm.cancel_all()
    assert hosts_sync_slurm().foreign_gpus == {}
    assert Allocation.objects.get(holder="slurm:gpu3").released_at is not None
    assert capacity.allocation_reserve(instance_type=eight, region=region, holder="t:3")


def test_a_host_whose_node_is_gone_goes_offline_and_others_hosts_are_left_alone(
    slurm_backend,
):
    region = Region.objects.get(code=REGION)
    gone = Host.objects.create(
        name="gpu9", region=region, vcpus=32, ram_gib=250, managed_by="slurm"
    )
    operators = catalog.host(region, name="gpu4")  # registered by hand, same name as a node
    result = hosts_sync_slurm()
    assert result.offline == ("gpu9",)
    gone.refresh_from_db()
    assert gone.state == HostState.OFFLINE
    assert "gpu4" in result.skipped
    operators.refresh_from_db()
    assert operators.managed_by == "" and operators.gpus.count() == 8
    assert result.created == ("gpu1", "gpu2", "gpu3")


def test_a_gpu_type_without_a_model_is_not_sold(slurm_backend, settings):
    from portal.provisioning import reset_backends

    settings.PROVISIONING_BACKENDS["slurm"]["OPTIONS"]["gpu_types"] = {"a100": "a100-sxm4-80gb"}
    reset_backends()
    result = hosts_sync_slurm()
    assert set(result.skipped) == set(NODES)
    assert not Host.objects.get(name="gpu1").gpus.exists()


def test_a_missing_region_is_refused_with_a_code(slurm_backend):
    Region.objects.filter(code=REGION).delete()
    with pytest.raises(InvalidInput) as refused:
        hosts_sync_slurm()
    assert refused.value.code == "region_invalid"
    assert not Host.objects.exists()


def test_the_command_mirrors_the_cluster(slurm_backend):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sync_slurm", stdout=out)
    assert out.getvalue().startswith("created 4, changed 0, offline 0")
    assert Host.objects.filter(managed_by="slurm").count() == 4


def test_the_periodic_task_mirrors_the_configured_clusters(slurm_backend, settings):
    from portal.catalog.tasks import slurm_sync

    settings.SLURM_SYNC_BACKENDS = []
    assert slurm_sync() == {}
    assert not Host.objects.exists()
    settings.SLURM_SYNC_BACKENDS = ["slurm"]
    assert slurm_sync()["slurm"]["created"] == NODES
    assert slurm_sync()["slurm"]["created"] == []
