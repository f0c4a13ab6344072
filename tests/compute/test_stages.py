"""How the latest launch or start went, on the instance page: placing, booting, ready, each
with the time it took, from the events the sync writes (simulated backend, controlled clock)."""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from portal.compute import services
from portal.compute.lifecycle import State
from portal.compute.models import Instance, InstanceEvent
from portal.compute.stages import Status, boot_stages, duration
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def simulated(simulated_backend):
    return simulated_backend(boot_seconds=40, stop_seconds=5)


@pytest.fixture
def world():
    return World()


def page(world, instance: Instance) -> str:
    client = Client()
    client.force_login(world.owner)
    response = client.get(reverse("compute:instance_detail", args=[instance.pk]))
    assert response.status_code == 200
    return response.content.decode()


def stages_of(instance: Instance):
    events = list(InstanceEvent.objects.filter(instance=instance).order_by("created_at", "id"))
    return boot_stages(events, timezone.now())


def test_a_launch_is_placed_then_boots_then_is_ready_and_the_page_says_how_long_each_took(world):
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=1)
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        placing = stages_of(instance).stages[0]
        assert (placing.key, placing.status) == ("placing", Status.CURRENT)
        assert 'id="stage-placing"' in page(world, instance)

        clock.shift(timedelta(seconds=3))  # the worker takes it: the host gets the machine
        assert services.instance_sync(instance_id=instance.pk) is True
        placing, booting, ready = stages_of(instance).stages
        assert (placing.status, placing.seconds) == (Status.DONE, 3.0)
        assert booting.status == Status.CURRENT and ready.status == Status.WAITING
        clock.shift(timedelta(seconds=12))
        html = page(world, instance)
        assert "Getting ready" in html and "3 s" in html and "12 s" in html  # booting so far

        clock.shift(timedelta(seconds=29))  # 41 s after the create: booted
        assert services.instance_sync(instance_id=instance.pk) is False
        instance.refresh_from_db()
        assert instance.state == State.RUNNING
        boot = stages_of(instance)
        placing, booting, ready = boot.stages
        assert [s.status for s in boot.stages] == [Status.DONE] * 3
        assert (placing.seconds, booting.seconds, boot.total_seconds) == (3.0, 41.0, 44.0)
        assert boot.ready_at == instance.running_since  # billing starts at ready
        html = page(world, instance)
        assert "Ready in 44 s" in html and "41 s" in html
        assert f"{instance.running_since:%H:%M:%S} UTC" in html
        assert "Billing for its GPUs started when it was ready." in html


def test_a_start_after_a_stop_is_timed_on_its_own(world):
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=1)
    with time_machine.travel(start, tick=False) as clock:
        instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=41))
        services.instance_sync(instance_id=instance.pk)
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=6))
        services.instance_sync(instance_id=instance.pk)
        assert 'id="boot-stages"' not in page(world, instance)  # stopped: nothing booting

        clock.shift(timedelta(hours=1))
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
        clock.shift(timedelta(seconds=1))
        services.instance_sync(instance_id=instance.pk)
        clock.shift(timedelta(seconds=40))
        assert services.instance_sync(instance_id=instance.pk) is False
        boot = stages_of(instance)
        assert [s.seconds for s in boot.stages[:2]] == [1.0, 40.0]
        assert boot.total_seconds == 41.0


def test_a_machine_that_fails_to_boot_shows_where_it_stopped(world, simulated):
    instance, _ = services.instance_launch(
        actor=world.actor(), request=world.request("boot-sim-hang")
    )
    services.instance_sync(instance_id=instance.pk)
    # the operator gives up on it while it boots
    from portal.accounts.types import Actor
    from tests import factories

    staff = factories.user(is_staff=True)
    services.operator_mark_failed(
        actor=Actor.for_operator(staff, world.org), instance_id=instance.pk
    )
    placing, booting, ready = stages_of(instance).stages
    assert (placing.status, booting.status, ready.status) == (
        Status.DONE,
        Status.FAILED,
        Status.WAITING,
    )
    assert "did not finish" in page(world, instance)


def test_a_backend_that_answers_running_at_once_has_no_booting_stage_of_its_own(memory_backend):
    world = World()
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request())
    assert services.instance_sync(instance_id=instance.pk) is False  # in memory: running at once
    placing, booting, ready = stages_of(instance).stages
    assert placing.status == Status.DONE and ready.status == Status.DONE
    assert booting.status == Status.SKIPPED and booting.seconds is None


def test_durations_read_naturally_in_both_languages():
    assert [duration(s) for s in (0.4, 42, 185, 7322)] == ["0 s", "42 s", "3 min 5 s", "2 h 2 min"]
    with translation.override("zh-hans"):
        assert duration(185) == "3 分 5 秒"
