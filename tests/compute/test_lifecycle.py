"""Every (state, action) pair, allowed or refused, and the transitions the backend drives."""

import pytest

from portal.accounts.types import Actor
from portal.catalog.models import GpuSlotClaim
from portal.compute import services
from portal.compute.lifecycle import (
    ACTIONS,
    TRANSITIONS,
    Action,
    InvalidTransition,
    State,
    check_transition,
)
from portal.compute.models import Instance
from tests import factories
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(memory_backend):
    return World()


def launched(world, name="box") -> Instance:
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request(name))
    return instance


def put_in_state(world, state: State) -> Instance:
    """An instance really in ``state``: driven there through the services and the backend."""
    instance = launched(world, f"in-{state.value}")
    route = {
        State.PENDING: [],
        State.PROVISIONING: ["provision"],
        State.RUNNING: ["sync"],
        State.STOPPING: ["sync", "stop"],
        State.STOPPED: ["sync", "stop", "sync"],
        State.STARTING: ["sync", "stop", "sync", "start"],
        State.REBOOTING: ["sync", "reboot"],
        State.TERMINATING: ["terminate"],
        State.TERMINATED: ["terminate", "sync"],
        State.FAILED: ["fail"],
    }[state]
    for step in route:
        if step == "sync":
            services.instance_sync(instance_id=instance.pk)
        elif step == "provision":
            Instance.objects.filter(pk=instance.pk).update(state=State.PROVISIONING)
        elif step == "fail":
            staff = factories.user(is_staff=True)
            services.operator_mark_failed(
                actor=Actor.for_operator(staff, world.org), instance_id=instance.pk
            )
        else:
            services.instance_action(actor=world.actor(), instance_id=instance.pk, action=step)
    instance.refresh_from_db()
    assert instance.state == state
    return instance


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("state", list(State))
def test_every_state_and_action(world, state, action):
    instance = put_in_state(world, state)
    expected = ACTIONS[action].get(state)
    if expected is None:
        with pytest.raises(InvalidTransition) as caught:
            services.instance_action(actor=world.actor(), instance_id=instance.pk, action=action)
        assert caught.value.code == "invalid_transition" and caught.value.status == 409
        assert f"Cannot {action.value} an instance that is {state.value}" in caught.value.message
        instance.refresh_from_db()
        assert instance.state == state
    else:
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action=action)
        instance.refresh_from_db()
        assert instance.state == expected
        assert instance.events.last().to_state == expected


def test_undeclared_transitions_raise():
    assert (State.RUNNING, State.PENDING) not in TRANSITIONS
    with pytest.raises(InvalidTransition, match="cannot go from running to pending"):
        check_transition("running", "pending")
    with pytest.raises(InvalidTransition):
        check_transition("terminated", "running")


def test_launch_runs_and_each_step_writes_an_event(world, memory_backend):
    instance = launched(world)
    assert instance.state == State.PENDING and instance.allocation is not None
    assert services.instance_sync(instance_id=instance.pk) is False  # in-memory boots at once
    instance.refresh_from_db()
    assert instance.state == State.RUNNING and instance.ip_address
    assert [(e.from_state, e.to_state) for e in instance.events.all()] == [
        ("", "pending"),
        ("pending", "provisioning"),
        ("provisioning", "running"),
    ]
    assert [c.method for c in memory_backend.calls] == ["create"]


def test_stop_releases_gpus_and_start_places_again(world):
    instance = put_in_state(world, State.RUNNING)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert (
        instance.state == State.STOPPED
        and instance.allocation is None
        and instance.ip_address is None
    )
    assert not GpuSlotClaim.objects.exists()
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == State.RUNNING and GpuSlotClaim.objects.count() == 8


def test_start_without_capacity_leaves_it_stopped_and_says_so(world):
    from portal.catalog.capacity import CapacityUnavailable

    instance = put_in_state(world, State.STOPPED)
    launched_full = launched(world, "taker")
    services.instance_sync(instance_id=launched_full.pk)
    services.instance_launch(actor=world.actor(), request=world.request("big", "gpu_2x_h200"))
    for i in range(5):
        services.instance_launch(actor=world.actor(), request=world.request(f"fill-{i}"))
    with pytest.raises(CapacityUnavailable) as caught:
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
    assert caught.value.code == "capacity_unavailable"
    instance.refresh_from_db()
    assert instance.state == State.STOPPED
    assert instance.events.last().reason.startswith("Start refused: No capacity for gpu_1x_h200")


def test_terminate_releases_capacity_and_keeps_volumes_unless_asked(world):
    from portal.compute.models import Volume

    kept = services.volume_create(
        actor=world.actor(), name="data", region=world.region.code, size_gb=100
    )
    instance, _ = services.instance_launch(
        actor=world.actor(), request=world.request(volume_ids=(kept.pk,), new_volume_gb=50)
    )
    Volume.objects.filter(name="box-data").update(delete_on_termination=True)
    services.instance_sync(instance_id=instance.pk)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == State.TERMINATED and instance.terminated_at
    assert not GpuSlotClaim.objects.exists()
    assert {v.name: v.state for v in Volume.objects.all()} == {
        "data": "available",
        "box-data": "deleted",
    }


def test_backend_failures_end_in_failed_with_capacity_released(world):
    for marker in ("sim-capacity", "sim-permanent"):
        instance = launched(world, f"x-{marker}")
        services.instance_sync(instance_id=instance.pk)
        instance.refresh_from_db()
        assert instance.state == State.FAILED and instance.allocation is None
        assert instance.status_message
    assert not GpuSlotClaim.objects.exists()


def test_transient_backend_errors_propagate_for_retry(world):
    from portal.provisioning.base import TransientBackendError

    instance = launched(world, "x-sim-transient-1")
    with pytest.raises(TransientBackendError):
        services.instance_sync(instance_id=instance.pk)
    services.instance_sync(instance_id=instance.pk)  # the retry succeeds
    instance.refresh_from_db()
    assert instance.state == State.RUNNING


def test_terminate_while_provisioning_wins(world):
    instance = launched(world)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == State.TERMINATED


def test_every_rule_moves_along_a_declared_transition_and_every_step_has_rules():
    from portal.compute.lifecycle import RULES, STEPS, BackendFailure

    for (state, answer), rule in RULES.items():
        assert state in STEPS, (state, answer)
        if rule.next_state is not None:
            assert (state, rule.next_state) in TRANSITIONS, (state, answer, rule)
    for state in STEPS:
        for failure in BackendFailure:  # a backend error always ends the step somehow
            assert (state, failure) in RULES, (state, failure)


def test_a_booting_machine_is_created_once_then_described(world, memory_backend):
    instance = launched(world, "slow-sim-hang")  # the in-memory machine boots forever
    assert services.instance_sync(instance_id=instance.pk) is True
    assert services.instance_sync(instance_id=instance.pk) is True
    assert services.instance_sync(instance_id=instance.pk) is True
    assert [c.method for c in memory_backend.calls] == ["create", "describe", "describe"]
    # a machine the backend lost while booting is created again at the next poll
    memory_backend.simulate_loss(instance.machine_id)
    assert services.instance_sync(instance_id=instance.pk) is True  # describe: missing
    assert services.instance_sync(instance_id=instance.pk) is True
    assert [c.method for c in memory_backend.calls][3:] == ["describe", "create"]
    assert instance.machine_id in memory_backend.machines


def test_a_reboot_is_sent_once_and_a_stop_once(world, memory_backend):
    instance = put_in_state(world, State.RUNNING)
    memory_backend.calls.clear()
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="reboot")
    assert services.instance_sync(instance_id=instance.pk) is False  # in-memory: back at once
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    assert services.instance_sync(instance_id=instance.pk) is False
    assert [c.method for c in memory_backend.calls] == ["describe", "reboot", "stop"]
