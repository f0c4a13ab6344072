"""No-GPU mode: a stopped instance started without its GPUs gets a CPU-only allocation on a host
of its region with room, uses no GPU quota, leaves what GPU types can be placed as it was, and
is sent to the backend without GPUs; a later stop and normal start gets its GPUs back."""

from decimal import Decimal

import pytest

from portal.accounts.models import AuditEvent
from portal.catalog import capacity
from portal.catalog.capacity import CapacityUnavailable
from portal.catalog.models import Allocation, GpuSlotClaim, Host
from portal.compute import services
from portal.compute.lifecycle import InvalidTransition, State
from portal.compute.models import Instance, Quota
from portal.errors import Conflict, InvalidInput
from portal.metering.lifecycle_usage import NO_GPU
from portal.metering.models import MeterPrice
from portal.metering.services import builtin_meters
from tests.factories import World, settle

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(memory_backend):
    world = World()
    MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU], currency="USD", price_per_unit=Decimal("0.80")
    )
    return world


def stopped(world, name="box", instance_type="gpu_1x_h200") -> Instance:
    instance, _ = services.instance_launch(
        actor=world.actor(), request=world.request(name, instance_type)
    )
    settle(instance)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    return settle(instance)


def start(world, instance, gpus=True) -> Instance:
    services.instance_action(
        actor=world.actor(), instance_id=instance.pk, action="start", gpus=gpus
    )
    instance.refresh_from_db()
    return instance


def test_a_start_without_gpus_holds_a_cpu_shape_and_no_gpu(world, memory_backend, settings):
    settings.COMPUTE_NO_GPU_VCPUS, settings.COMPUTE_NO_GPU_RAM_GIB = 4, 16
    instance = stopped(world)
    assert not GpuSlotClaim.objects.exists()
    instance = start(world, instance, gpus=False)
    assert instance.state == State.STARTING and instance.gpus is False
    allocation = instance.allocation
    # the type has 4 vCPUs and 32 GiB: the shape is 4 vCPUs (its own) and 16 GiB (the setting)
    assert (allocation.vcpus, allocation.ram_gib, allocation.gpu_slots) == (4, 16, [])
    assert allocation.host_id in {h.pk for h in world.hosts}
    assert not GpuSlotClaim.objects.exists()
    event = instance.events.last()
    assert event.reason == "Start without GPUs requested" and event.detail == {"gpus": False}
    audit = AuditEvent.objects.filter(action="instance.start").last()
    assert audit.details == {"gpus": False}

    instance = settle(instance)
    assert instance.state == State.RUNNING and instance.ssh_command
    spec = memory_backend.calls[-1].spec
    assert memory_backend.calls[-1].method == "start"
    assert spec.gpus == () and (spec.vcpus, spec.ram_gib) == (4, 16)


def test_a_stop_and_a_normal_start_get_the_gpus_back(world, memory_backend):
    instance = settle(start(world, stopped(world), gpus=False))
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    instance = settle(instance)
    assert instance.allocation is None and instance.gpus is False  # its last start's mode
    instance = settle(start(world, instance))
    assert instance.state == State.RUNNING and instance.gpus is True
    assert GpuSlotClaim.objects.filter(allocation=instance.allocation).count() == 8
    assert len(memory_backend.calls[-1].spec.gpus) == 1
    assert "gpus" not in instance.events.last().detail


def test_gpu_availability_is_unchanged_by_a_cpu_only_allocation(world):
    instance = stopped(world)
    before = capacity.availability()
    start(world, instance, gpus=False)
    assert capacity.availability() == before
    assert before[world.types["gpu_1x_h200"].pk] == {world.region.code: 8}


def test_no_host_with_room_refuses_and_leaves_it_stopped(world):
    instance = stopped(world)
    Host.objects.filter(pk__in=[h.pk for h in world.hosts]).update(vcpus=3)  # 4 are needed
    with pytest.raises(CapacityUnavailable) as caught:
        start(world, instance, gpus=False)
    assert caught.value.code == "capacity_unavailable"
    assert "without GPUs" in caught.value.message
    instance.refresh_from_db()
    assert instance.state == State.STOPPED and instance.allocation is None
    assert instance.gpus is True  # nothing half-written
    assert not Allocation.objects.filter(released_at__isnull=True).exists()
    assert instance.events.last().reason.startswith("Start refused: No host in us-east-1")


def test_room_is_counted_from_the_active_allocations_vcpus_and_ram(world, settings):
    settings.COMPUTE_NO_GPU_VCPUS, settings.COMPUTE_NO_GPU_RAM_GIB = 4, 16
    first, second = stopped(world, "first"), stopped(world, "second")
    # room for exactly one CPU shape
    Host.objects.filter(pk__in=[h.pk for h in world.hosts]).update(vcpus=4, ram_gib=16)
    settle(start(world, first, gpus=False))
    with pytest.raises(CapacityUnavailable):
        start(world, second, gpus=False)
    services.instance_action(actor=world.actor(), instance_id=first.pk, action="stop")
    settle(first)  # its allocation is released
    assert start(world, second, gpus=False).state == State.STARTING


def test_no_gpu_mode_uses_no_gpu_quota(world):
    Quota.objects.create(organization=world.org, max_gpus=1)
    instance = stopped(world)
    other, _ = services.instance_launch(actor=world.actor(), request=world.request("other"))
    # the quota is full with "other": a start with GPUs is refused, one without is not
    with pytest.raises(Conflict) as caught:
        start(world, instance)
    assert caught.value.code == "quota_exceeded"
    start(world, instance, gpus=False)
    services.instance_action(actor=world.actor(), instance_id=other.pk, action="terminate")
    settle(other)
    # and the GPU-less one does not count against a new launch
    services.instance_launch(actor=world.actor(), request=world.request("third"))


def test_only_a_start_of_a_stopped_instance_may_be_without_gpus(world):
    instance = stopped(world)
    running = settle(start(world, stopped(world, "running")))
    with pytest.raises(InvalidTransition):
        start(world, running, gpus=False)
    with pytest.raises(InvalidInput) as caught:
        services.instance_action(
            actor=world.actor(), instance_id=running.pk, action="reboot", gpus=False
        )
    assert caught.value.code == "invalid"
    instance.refresh_from_db()
    assert instance.state == State.STOPPED


def test_not_offered_where_no_no_gpu_price_is_set(world):
    instance = stopped(world)
    MeterPrice.objects.all().delete()
    with pytest.raises(Conflict) as caught:
        start(world, instance, gpus=False)
    assert caught.value.code == "no_gpu_mode_unavailable"
    assert caught.value.details == {"region": "us-east-1", "currency": "USD"}
    instance.refresh_from_db()
    assert (
        instance.state == State.STOPPED
        and not Allocation.objects.filter(released_at__isnull=True).exists()
    )


def test_a_region_s_own_price_wins_over_the_every_region_one(world):
    from portal.metering.rating import no_gpu_hourly_price

    meter = builtin_meters()[NO_GPU]
    MeterPrice.objects.create(
        meter=meter, currency="USD", region=world.region, price_per_unit=Decimal("0.55")
    )
    assert no_gpu_hourly_price(region_id=world.region.pk, currency="USD") == Decimal("0.55")
    other = World(region_code="eu-west-9", region_country="DE")
    assert no_gpu_hourly_price(region_id=other.region.pk, currency="USD") == Decimal("0.80")
    assert no_gpu_hourly_price(region_id=world.region.pk, currency="CNY") is None


# --- the API ----------------------------------------------------------------------------------


def test_api_starts_without_gpus_and_says_so(world, key_client):
    from tests.api.openapi import portal_schema

    client = key_client("member", organization=world.org)
    instance = stopped(world)
    assert client.get(f"/api/v1/instances/{instance.pk}").json()["gpus"] is True
    response = client.post(f"/api/v1/instances/{instance.pk}/start", {"gpus": False}, format="json")
    assert response.status_code == 202, response.content
    assert (response.json()["status"], response.json()["gpus"]) == ("starting", False)
    settle(instance)
    got = client.get(f"/api/v1/instances/{instance.pk}").json()
    assert got["status"] == "running" and got["gpus"] is False and got["ssh_command"]
    listed = client.get("/api/v1/instances").json()["results"]
    assert [row["gpus"] for row in listed if row["id"] == instance.pk] == [False]
    filtered = client.get("/api/v1/instances?status=running").json()["results"]
    assert [row["gpus"] for row in filtered] == [False]

    # stop, then a start without a body has the GPUs again
    client.post(f"/api/v1/instances/{instance.pk}/stop")
    settle(instance)
    response = client.post(f"/api/v1/instances/{instance.pk}/start")
    assert response.status_code == 202 and response.json()["gpus"] is True

    schema = portal_schema().raw_schema
    start = schema["paths"]["/api/v1/instances/{id}/start"]["post"]
    body = start["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert schema["components"]["schemas"][body]["properties"]["gpus"]["type"] == "boolean"
    assert "no_gpu_mode_unavailable" in start["description"]
    instance_schema = schema["components"]["schemas"]["Instance"]["properties"]
    assert instance_schema["gpus"]["type"] == "boolean"


def test_api_refuses_what_cannot_be_started_without_gpus(world, key_client):
    client = key_client("member", organization=world.org)
    running = settle(start(world, stopped(world, "running")))
    response = client.post(f"/api/v1/instances/{running.pk}/start", {"gpus": False}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"

    response = client.post(
        f"/api/v1/instances/{running.pk}/start", {"gpus": "perhaps"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"

    instance = stopped(world)
    MeterPrice.objects.all().delete()
    response = client.post(f"/api/v1/instances/{instance.pk}/start", {"gpus": False}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_gpu_mode_unavailable"
    assert "not offered in us-east-1 in USD" in error["message"]
    assert client.get(f"/api/v1/instances/{instance.pk}").json()["status"] == "stopped"
