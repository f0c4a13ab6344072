"""Availability and placement: whole GPUs, MIG slices, mixed use, full hosts, concurrency."""

import threading

import pytest
from django.db import close_old_connections

from portal.catalog import capacity, services
from portal.catalog.capacity import CapacityUnavailable
from portal.catalog.models import Allocation, GpuSlotClaim
from tests.conftest import missing  # noqa: F401  (re-exported for readers)

pytestmark = pytest.mark.django_db


def reserve(instance_type, region, n=1):
    return [
        capacity.allocation_reserve(
            instance_type=instance_type,
            region=region,
            holder=f"test:{instance_type.name}:{i}:{Allocation.objects.count()}",
        )
        for i in range(n)
    ]


def free(instance_type):
    return capacity.availability([instance_type]).get(instance_type.pk, {})


# --- whole GPUs -------------------------------------------------------------------------------


def test_whole_gpu_types_need_all_gpus_on_one_host(make_host, make_type, region):
    make_host(count=8)
    make_host(count=8)
    eight = make_type("gpu_8x_h200", count=8, vcpus=64, ram_gib=1024)
    four = make_type("gpu_4x_h200", count=4, vcpus=32, ram_gib=512)
    one = make_type("gpu_1x_h200", count=1, vcpus=8, ram_gib=128)
    assert free(eight) == {"us-east-1": 2}
    assert free(four) == {"us-east-1": 4}
    assert free(one) == {"us-east-1": 16}
    # One GPU taken on each host: no host has 8 free any more, though 14 GPUs are free.
    reserve(one, region, 1)
    reserve(one, region, 1)
    assert (
        sorted(a.host_id for a in Allocation.objects.all())[0]
        == sorted(a.host_id for a in Allocation.objects.all())[1]
    )
    assert free(eight) == {"us-east-1": 1}  # best fit kept the second host whole


def test_best_fit_puts_small_instances_on_the_fullest_host(make_host, make_type, region):
    first, second = make_host(count=8, name="a-host"), make_host(count=8, name="b-host")
    four = make_type("gpu_4x_h200", count=4, vcpus=32, ram_gib=512)
    one = make_type("gpu_1x_h200", count=1)
    (a,) = reserve(four, region)
    assert a.host_id == first.pk  # tie broken by name
    (b,) = reserve(one, region)
    assert b.host_id == first.pk  # the host with fewer free GPUs
    assert [s["gpu"] for s in b.gpu_slots] != [s["gpu"] for s in a.gpu_slots]
    assert free(make_type("gpu_8x_h200", count=8, vcpus=64, ram_gib=1024)) == {"us-east-1": 1}
    assert second.pk not in {a.host_id, b.host_id}


def test_vcpus_and_ram_limit_a_host_too(make_host, make_type):
    make_host(count=8, vcpus=16, ram_gib=256)
    assert free(make_type("cpu_heavy", count=1, vcpus=8, ram_gib=64)) == {"us-east-1": 2}
    assert free(make_type("ram_heavy", count=1, vcpus=1, ram_gib=200)) == {"us-east-1": 1}
    assert free(make_type("too_big", count=1, vcpus=32, ram_gib=64)) == {}


def test_full_host_refuses_with_capacity_unavailable_naming_alternatives(
    make_host, make_type, region
):
    other = services.region_ensure(code="eu-west-1", name="Dublin", country="IE")
    make_host(count=2)
    make_host(count=8, in_region=other)
    two = make_type("gpu_2x_h200", count=2, vcpus=16, ram_gib=256)
    one = make_type("gpu_1x_h200", count=1)
    reserve(two, region)
    assert free(two) == {"eu-west-1": 4}
    with pytest.raises(CapacityUnavailable) as caught:
        reserve(two, region)
    error = caught.value
    assert error.code == "capacity_unavailable" and error.status == 409
    assert error.details["regions_with_capacity"] == ["eu-west-1"]
    assert error.details["similar_types_available_here"] == []
    assert "available in eu-west-1" in error.message
    assert one.name not in error.details["similar_types_available_here"]


def test_draining_and_offline_hosts_take_nothing(make_host, make_type):
    host = make_host(count=8)
    one = make_type("gpu_1x_h200")
    services.host_set_state(host=host, state="draining")
    assert free(one) == {}
    services.host_set_state(host=host, state="active")
    assert free(one) == {"us-east-1": 8}


def test_release_gives_capacity_back_and_is_idempotent(make_host, make_type, region):
    make_host(count=1)
    one = make_type("gpu_1x_h200")
    (allocation,) = reserve(one, region)
    assert free(one) == {}
    capacity.allocation_release(allocation=allocation)
    capacity.allocation_release(allocation=allocation)
    assert free(one) == {"us-east-1": 1}
    assert not GpuSlotClaim.objects.exists()


# --- MIG slices -------------------------------------------------------------------------------


def test_h200_mig_profiles_follow_the_real_placement_table(make_host, make_type):
    make_host(count=1)
    expected = {"1g.18gb": 7, "1g.35gb": 4, "2g.35gb": 3, "3g.71gb": 2, "4g.71gb": 1, "7g.141gb": 1}
    for profile, count in expected.items():
        instance_type = make_type(
            f"mig_{profile.replace('.', '_')}", mig=profile, vcpus=1, ram_gib=1
        )
        assert free(instance_type) == {"us-east-1": count}, profile


def test_mig_slices_of_different_profiles_do_not_overlap(make_host, make_type, region):
    make_host(count=1)
    small = make_type("mig_1g", mig="1g.18gb", vcpus=1, ram_gib=1)
    three = make_type("mig_3g", mig="3g.71gb", vcpus=1, ram_gib=1)
    four = make_type("mig_4g", mig="4g.71gb", vcpus=1, ram_gib=1)
    whole = make_type("gpu_1x_h200")
    (slice_,) = reserve(small, region)
    # Small slices fill from the top: slot 6, so 4g at slot 0 still fits.
    assert slice_.gpu_slots[0]["start"] == 6 and slice_.gpu_slots[0]["size"] == 1
    assert free(four) == {"us-east-1": 1}
    assert free(three) == {"us-east-1": 1}  # 3g at 4 overlaps slot 6; 3g at 0 is free
    assert free(whole) == {}  # a GPU with slices cannot be sold whole
    reserve(four, region)
    assert free(three) == {}
    assert free(small) == {"us-east-1": 2}  # slots 4 and 5 (slot 7 is no 1g placement)


def test_a_whole_gpu_cannot_host_slices(make_host, make_type, region):
    make_host(count=1)
    whole = make_type("gpu_1x_h200")
    small = make_type("mig_1g", mig="1g.18gb", vcpus=1, ram_gib=1)
    reserve(whole, region)
    assert free(small) == {}
    with pytest.raises(CapacityUnavailable):
        reserve(small, region)


def test_slices_prefer_a_gpu_already_in_use(make_host, make_type, region):
    make_host(count=2)
    small = make_type("mig_1g", mig="1g.18gb", vcpus=1, ram_gib=1)
    whole = make_type("gpu_1x_h200")
    first, second = reserve(small, region, 2)
    assert first.gpu_slots[0]["gpu"] == second.gpu_slots[0]["gpu"]
    assert {first.gpu_slots[0]["start"], second.gpu_slots[0]["start"]} == {6, 5}
    assert free(whole) == {"us-east-1": 1}


def test_gpus_not_enabled_for_mig_are_only_sold_whole(make_host, make_type, region):
    make_host(gpu="A100", count=8, mig=False)
    assert free(make_type("gpu_1x_a100", gpu="a100-sxm4-40gb")) == {"us-east-1": 8}


def test_filling_a_gpu_with_slices_then_the_rest(make_host, make_type, region):
    make_host(count=1)
    small = make_type("mig_1g", mig="1g.18gb", vcpus=1, ram_gib=1)
    reserve(small, region, 7)
    assert free(small) == {}
    with pytest.raises(CapacityUnavailable):
        reserve(small, region)
    assert GpuSlotClaim.objects.count() == 7


def test_placement_is_deterministic_and_read_only(make_host, make_type, region):
    make_host(count=8, name="z-host")
    make_host(count=8, name="a-host")
    one = make_type("gpu_1x_h200")
    first = capacity.placement(instance_type=one, region=region)
    assert first == capacity.placement(instance_type=one, region=region)
    assert first.host_name == "a-host" and [s.start for s in first.slots] == [0]
    assert not Allocation.objects.exists()


def test_availability_runs_a_fixed_number_of_queries(
    make_host, make_type, django_assert_max_num_queries
):
    from portal.catalog.models import InstanceType

    for _ in range(3):
        make_host(count=8)
    make_type("gpu_1x_h200")
    make_type("mig_1g", mig="1g.18gb", vcpus=1, ram_gib=1)
    with django_assert_max_num_queries(6):
        small = capacity.availability()
    for _ in range(5):
        make_host(count=8)
    make_type("gpu_8x_h200", count=8)
    with django_assert_max_num_queries(6):
        large = capacity.availability()
    assert len(large) == InstanceType.objects.count() == len(small) + 1


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_take_the_same_gpu(
    require_postgres, make_host, make_type, region
):
    make_host(count=4, vcpus=512, ram_gib=8192)
    one = make_type("gpu_1x_h200")
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            results.append(
                capacity.allocation_reserve(instance_type=one, region=region, holder=f"t{i}")
            )
        except CapacityUnavailable as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(errors) == 4
    gpus = [a.gpu_slots[0]["gpu"] for a in results]
    assert len(set(gpus)) == 4
    assert GpuSlotClaim.objects.count() == 32
