"""Launches of different organisations at once, on PostgreSQL with real threads: they lock only
the host they place on, so they run side by side, and still never oversell a GPU."""

import threading
import time

import pytest
from django.db import close_old_connections, connection, transaction

from portal.catalog import capacity
from portal.catalog.models import Allocation, GpuSlotClaim, Host
from portal.compute import services
from tests.concurrency import at_once
from tests.factories import World

pytestmark = pytest.mark.django_db(transaction=True)


def test_40_launches_of_4_organisations_at_once_for_10_gpus_give_10(require_postgres, settings):
    settings.DEFAULT_GPU_QUOTA = 100
    world = World(hosts=2, gpus_per_host=5)
    tenants = [world.tenant(f"tenant-{t}") for t in range(4)]
    actors = [tenant.actor() for tenant in tenants]
    outcomes = at_once(
        40,
        lambda i: services.instance_launch(
            actor=actors[i % 4], request=tenants[i % 4].request(name=f"race-{i}")
        ),
    )
    assert outcomes.count("ok") == 10 and outcomes.count("capacity_unavailable") == 30, outcomes
    claims = list(GpuSlotClaim.objects.values_list("gpu_id", "slot"))
    assert len(claims) == len(set(claims)) == 80
    gpus = [a.gpu_slots[0]["gpu"] for a in Allocation.objects.filter(released_at__isnull=True)]
    assert len(gpus) == len(set(gpus)) == 10


def test_mig_slices_of_8_organisations_at_once_fill_one_host_exactly(require_postgres, settings):
    settings.DEFAULT_GPU_QUOTA = 100
    world = World(hosts=1, gpus_per_host=2)  # 14 slices of 1g.18gb
    tenants = [world.tenant(f"crowd-{t}") for t in range(8)]
    actors = [tenant.actor() for tenant in tenants]
    outcomes = at_once(
        24,
        lambda i: services.instance_launch(
            actor=actors[i % 8],
            request=tenants[i % 8].request(name=f"slice-{i}", instance_type="mig_1g_18gb"),
        ),
    )
    assert outcomes.count("ok") == 14 and outcomes.count("capacity_unavailable") == 10, outcomes
    claims = list(GpuSlotClaim.objects.values_list("gpu_id", "slot"))
    assert len(claims) == len(set(claims)) == 14


def test_a_reservation_passes_over_a_host_another_one_holds(require_postgres, settings):
    """While a transaction holds the host best fit would choose, a reservation goes to the next
    host at once instead of waiting for it (only the host placed on is locked)."""
    world = World(hosts=2, gpus_per_host=8)
    instance_type = world.types["gpu_1x_h200"]
    # best fit takes the host with the fewest free GPUs: the one seeded here
    seed = capacity.allocation_reserve(instance_type=instance_type, region=world.region, holder="s")
    held, release = threading.Event(), threading.Event()

    def holder():
        try:
            with transaction.atomic():
                list(Host.objects.select_for_update().filter(pk=seed.host_id).values_list("pk"))
                held.set()
                release.wait(timeout=30)
        finally:
            close_old_connections()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(timeout=30)
        began = time.monotonic()
        passing = capacity.allocation_reserve(
            instance_type=instance_type, region=world.region, holder="passing"
        )
        assert passing.host_id != seed.host_id  # not the held host
        assert time.monotonic() - began < 10  # and without waiting for it (30 s)
    finally:
        release.set()
        thread.join(timeout=30)
    after = capacity.allocation_reserve(
        instance_type=instance_type, region=world.region, holder="after"
    )
    assert after.host_id == seed.host_id  # best fit again once it is free
    assert connection.vendor == "postgresql"
