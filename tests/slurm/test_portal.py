"""A customer's instance on the Slurm cluster, through the portal's own services."""

import time

import pytest
from django.test import Client

from portal.catalog import services as catalog_services
from portal.catalog.models import Allocation
from portal.catalog.slurm_sync import hosts_sync_slurm
from portal.compute import services as compute_services
from portal.compute.models import Instance
from portal.errors import Conflict
from tests.factories import World
from tests.slurm.conftest import REGION


@pytest.fixture
def world(slurm_backend, settings):
    settings.PROVISIONING_BACKEND = "slurm"
    world = World(hosts=1, region_code=REGION, region_country="CN")  # loads H200's MIG profiles
    for host in world.hosts:  # its synthetic host takes nothing: only the cluster's nodes do
        catalog_services.host_set_state(host=host, state="offline")
    world.org.verified_as = "enterprise"  # launches in a Chinese region need a verified org
    world.org.save(update_fields=["verified_as"])
    hosts_sync_slurm()
    return world


def sync_until(instance: Instance, state: str, timeout: float = 20) -> Instance:
    deadline = time.monotonic() + timeout
    while True:
        compute_services.instance_sync(instance_id=instance.pk)
        instance.refresh_from_db()
        if instance.state == state or time.monotonic() > deadline:
            return instance
        time.sleep(0.2)


def test_an_instance_is_a_slurm_allocation_that_cannot_be_stopped(world, slurm):
    instance, _ = compute_services.instance_launch(
        actor=world.actor(), request=world.request("trainer", "gpu_8x_h200")
    )
    assert instance.backend == "slurm"
    instance = sync_until(instance, "running")
    assert instance.state == "running"
    assert instance.running_since is not None  # billed from here
    jobs = [j for j in slurm.rest("GET", "jobs")["jobs"] if j["job_state"] == "RUNNING"]
    assert len(jobs) == 1
    assert jobs[0]["nodes"] == instance.host.name
    assert jobs[0]["gres_detail"] == ["gpu:h200:8(IDX:0-7)"]

    for action in ("stop", "reboot"):
        with pytest.raises(Conflict) as refused:
            compute_services.instance_action(
                actor=world.actor(), instance_id=instance.pk, action=action
            )
        assert refused.value.code == "action_unsupported"
        assert "allocation on a cluster" in refused.value.message
    instance.refresh_from_db()
    assert instance.state == "running"  # nothing was faked

    compute_services.instance_action(
        actor=world.actor(), instance_id=instance.pk, action="terminate"
    )
    instance = sync_until(Instance.objects.get(pk=instance.pk), "terminated")
    assert instance.state == "terminated"
    assert Allocation.objects.get(holder=f"instance:{instance.pk}").released_at is not None
    assert not [j for j in slurm.rest("GET", "jobs")["jobs"] if j["job_state"] == "RUNNING"]


def test_the_api_refuses_stop_with_its_code(world, slurm, api_client):
    from tests.factories import api_key_secret

    instance, _ = compute_services.instance_launch(
        actor=world.actor(), request=world.request("api-box", "gpu_1x_h200")
    )
    instance = sync_until(instance, "running")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_secret(world.org, 'owner')}")
    answer = api_client.post(f"/api/v1/instances/{instance.pk}/stop")
    assert answer.status_code == 409, answer.content
    assert answer.json()["error"]["code"] == "action_unsupported"
    # nor is it offered: the API lists, and the page shows, only what Slurm can do
    assert api_client.get(f"/api/v1/instances/{instance.pk}").json()["actions"] == ["terminate"]
    listed = api_client.get("/api/v1/instances").json()["results"]
    assert [row["actions"] for row in listed] == [["terminate"]]
    page = Client()
    page.force_login(world.owner)
    html = page.get(f"/instances/{instance.pk}/").content.decode()
    assert 'id="action-stop"' not in html and 'id="action-reboot"' not in html
    assert 'id="terminate-form"' in html


def fill_the_cluster(slurm) -> None:
    from tests.slurm.test_inventory import hold_gpus

    for node in ("gpu1", "gpu2", "gpu3", "gpu4"):
        hold_gpus(slurm, node, 8)


def test_a_launch_is_refused_when_slurm_says_the_gpus_are_taken(world, slurm):
    from portal.catalog.capacity import CapacityUnavailable

    fill_the_cluster(slurm)  # other users of the centre
    hosts_sync_slurm()
    with pytest.raises(CapacityUnavailable) as refused:
        compute_services.instance_launch(
            actor=world.actor(), request=world.request("late", "gpu_8x_h200")
        )
    assert refused.value.code == "capacity_unavailable"
    assert not Instance.objects.exists()


def test_a_launch_placed_before_slurm_gave_the_gpus_away_fails_unbilled(world, slurm):
    instance, _ = compute_services.instance_launch(
        actor=world.actor(), request=world.request("raced", "gpu_8x_h200")
    )
    fill_the_cluster(slurm)  # between the portal's placement and its job
    instance = sync_until(instance, "failed")
    assert instance.state == "failed"
    assert instance.running_since is None  # never billed
    assert Allocation.objects.get(holder=f"instance:{instance.pk}").released_at is not None
    assert not [j for j in slurm.rest("GET", "jobs")["jobs"] if j["name"].startswith("portal-")
                and j["job_state"] in ("PENDING", "RUNNING")]  # fmt: skip
