"""The sync task with the simulated backend (state in the database, real boot times under a
controlled clock), and the reconciler that leaves nothing stuck."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from portal.accounts.types import Actor
from portal.catalog.models import GpuSlotClaim
from portal.compute import services
from portal.compute.lifecycle import State
from portal.compute.models import BackendOrphan, Instance
from portal.provisioning.simulated import simulate_loss
from tests import factories
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def simulated(settings, simulated_backend):
    settings.COMPUTE_REDISPATCH_SECONDS = 60
    settings.COMPUTE_LAUNCH_TIMEOUT_SECONDS = 900
    return simulated_backend(boot_seconds=60, stop_seconds=20)


@pytest.fixture
def world():
    return World()


def state(instance) -> str:
    instance.refresh_from_db()
    return instance.state


def test_boot_takes_time_and_sync_polls_until_running(world):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        assert services.instance_sync(instance_id=instance.pk) is True  # booting: poll again
        assert state(instance) == State.PROVISIONING and instance.observed_state == "provisioning"
        clock.shift(timedelta(seconds=30))
        assert services.instance_sync(instance_id=instance.pk) is True
        clock.shift(timedelta(seconds=31))
        assert services.instance_sync(instance_id=instance.pk) is False
        assert state(instance) == State.RUNNING
        assert instance.ip_address.startswith("10.64.")
        assert instance.running_since == start + timedelta(seconds=61)
        # stop takes its time too, then the GPUs go back
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        assert services.instance_sync(instance_id=instance.pk) is True
        assert GpuSlotClaim.objects.count() == 8
        clock.shift(timedelta(seconds=21))
        assert services.instance_sync(instance_id=instance.pk) is False
        assert state(instance) == State.STOPPED and not GpuSlotClaim.objects.exists()


def test_sync_twice_makes_one_machine(world, simulated):
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
    services.instance_sync(instance_id=instance.pk)
    services.instance_sync(instance_id=instance.pk)
    assert [m.machine_id for m in simulated.list_machines()] == [instance.machine_id]


def test_reboot_goes_through_rebooting_and_back(world):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=61))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="reboot")
        assert services.instance_sync(instance_id=instance.pk) is True
        assert state(instance) == State.REBOOTING and instance.observed_state == "rebooting"
        assert services.instance_sync(instance_id=instance.pk) is True  # no second reboot
        clock.shift(timedelta(seconds=61))
        assert services.instance_sync(instance_id=instance.pk) is False
        assert state(instance) == State.RUNNING


def test_reconciler_redispatches_lost_work(world, django_capture_on_commit_callbacks):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        # the enqueue after commit was lost (broker down); nothing happens for two minutes
        clock.shift(timedelta(minutes=2))
        with django_capture_on_commit_callbacks() as callbacks:
            report = services.reconcile()
        assert report.redispatched == (instance.pk,)
        assert len(callbacks) == 1
        # dispatched just now: the next sweep leaves it alone
        assert services.reconcile().redispatched == ()


def test_reconciler_fails_launches_stuck_past_the_timeout_and_releases_capacity(
    world, simulated, django_capture_on_commit_callbacks
):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(
            actor=world.actor(), request=world.request(name="stuck-sim-hang")
        )
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(minutes=16))
        assert services.instance_sync(instance_id=instance.pk) is True  # still booting, forever
        with django_capture_on_commit_callbacks(execute=True):
            report = services.reconcile()
        assert report.timed_out == (instance.pk,)
        assert (
            state(instance) == State.FAILED
            and "Timed out after 15 minutes" in instance.status_message
        )
        assert not GpuSlotClaim.objects.exists()
        assert simulated.describe(instance.machine_id).state == "terminated"


def test_reconciler_terminates_instances_whose_machine_is_gone(world):
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
    services.instance_sync(instance_id=instance.pk)
    with time_machine.travel(timezone.now() + timedelta(seconds=61), tick=False):
        services.instance_sync(instance_id=instance.pk)
    assert state(instance) == State.RUNNING
    simulate_loss(instance.machine_id)
    report = services.reconcile()
    assert report.gone == (instance.pk,)
    assert state(instance) == State.TERMINATED
    assert instance.events.order_by("id").last().reason == "The backend no longer has this machine."
    assert not GpuSlotClaim.objects.exists()


def test_reconciler_reports_machines_the_database_does_not_know(world, simulated):
    from portal.provisioning.base import MachineSpec

    simulated.create(
        MachineSpec(
            machine_id="inst-999999",
            name="ghost",
            host_name="x",
            vcpus=1,
            ram_gib=1,
            disk_gb=1,
            image="i",
        )
    )
    report = services.reconcile()
    assert report.orphans == ("inst-999999",)
    assert BackendOrphan.objects.get().machine_id == "inst-999999"
    simulated.terminate("inst-999999")
    services.reconcile()
    assert not BackendOrphan.objects.exists()


def test_operator_force_terminate_and_mark_failed(world):
    first, _ = services.instance_launch(actor=world.actor(), request=world.request(name="one"))
    second, _ = services.instance_launch(actor=world.actor(), request=world.request(name="two"))
    operator = Actor.for_operator(factories.user(email="ops@example.com", is_staff=True), world.org)
    services.operator_force_terminate(actor=operator, instance_id=first.pk)
    services.operator_mark_failed(actor=operator, instance_id=second.pk, reason="bad host")
    assert (state(first), state(second)) == (State.TERMINATED, State.FAILED)
    assert second.status_message == "bad host"
    assert not GpuSlotClaim.objects.exists()
    assert Instance.objects.get(pk=first.pk).events.last().actor_label == "operator ops@example.com"


def test_a_machine_lost_while_stopping_ends_terminated_with_everything_released(world):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=61))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        simulate_loss(instance.machine_id)
        assert services.instance_sync(instance_id=instance.pk) is False
    assert state(instance) == State.TERMINATED
    assert not GpuSlotClaim.objects.exists()


def test_a_start_that_times_out_goes_back_to_stopped_keeping_the_disk(
    world, django_capture_on_commit_callbacks
):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=61))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=21))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
        clock.shift(timedelta(minutes=16))  # the start was never worked on
        with django_capture_on_commit_callbacks(execute=True):
            report = services.reconcile()
    assert report.timed_out == (instance.pk,)
    assert state(instance) == State.STOPPED
    assert instance.terminated_at is None and not GpuSlotClaim.objects.exists()


def test_a_sync_that_loses_the_race_to_terminate_creates_no_machine(world, simulated):
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    services.instance_sync(instance_id=instance.pk)  # terminates (nothing was created)
    assert services.instance_sync(instance_id=instance.pk) is False
    assert state(instance) == State.TERMINATED
    assert simulated.list_machines() == []


def test_a_running_instance_whose_machine_crashed_is_failed_and_released(world):
    from portal.provisioning.simulated import simulate_crash

    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=61))
        services.instance_sync(instance_id=instance.pk)
        simulate_crash(instance.machine_id)
        report = services.reconcile()
    assert report.gone == (instance.pk,)
    assert state(instance) == State.FAILED and not GpuSlotClaim.objects.exists()


def test_a_stop_is_sent_once_then_the_machine_is_described_until_it_is_off(
    world, simulated, monkeypatch
):
    calls = []

    def spy(method: str):
        original = getattr(simulated, method)

        def call(*args):
            calls.append(method)
            return original(*args)

        return call

    for method in ("create", "stop", "describe"):
        monkeypatch.setattr(simulated, method, spy(method))
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=61))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        assert services.instance_sync(instance_id=instance.pk) is True
        clock.shift(timedelta(seconds=10))
        assert services.instance_sync(instance_id=instance.pk) is True
        clock.shift(timedelta(seconds=11))
        assert services.instance_sync(instance_id=instance.pk) is False
    assert state(instance) == State.STOPPED
    assert calls == ["create", "describe", "stop", "describe", "describe"]


def test_operator_services_refuse_an_actor_that_is_not_an_operator(world):
    from portal.errors import PermissionDenied

    instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
    with pytest.raises(PermissionDenied):
        services.operator_mark_failed(actor=world.actor(), instance_id=instance.pk)
    assert state(instance) == State.PENDING
