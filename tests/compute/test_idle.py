"""Idle stop and scheduled shutdown: the sweep judges GPU telemetry (``metering.GpuSample``),
stops through the normal stop path once, tells the people who should know once, and never
stops on missing data."""

from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from portal.accounts.models import AuditEvent
from portal.compute import services
from portal.compute.lifecycle import State
from portal.compute.models import Instance, InstanceEvent
from portal.compute.services.idle import gpu_ids_of
from portal.errors import InvalidInput
from portal.metering.models import GpuSample
from tests import factories
from tests.factories import World, settle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]

NOW = timezone.now().replace(microsecond=0)
STEP = timedelta(seconds=30)  # how often the fake agent samples in these tests


@pytest.fixture
def world():
    return World()


def running(world, name="box", instance_type="gpu_1x_h200", minutes=30, since=None, **settings):
    """An instance running since ``since`` (an hour before NOW), idle stop on by default."""
    settings.setdefault("idle_stop_enabled", True)
    instance, _ = services.instance_launch(
        actor=world.actor(),
        request=world.request(
            name=name, instance_type=instance_type, idle_stop_minutes=minutes, **settings
        ),
    )
    instance = settle(instance)
    assert instance.state == State.RUNNING
    Instance.objects.filter(pk=instance.pk).update(running_since=since or NOW - timedelta(hours=1))
    instance.refresh_from_db()
    return instance


def samples(gpu_id, start, end, util, step=STEP):
    """One sample every ``step`` from ``start`` up to ``end`` (inclusive) at ``util`` percent
    (a callable of the moment, or a number; None for a reading NVML did not give)."""
    rows, moment = [], start
    while moment <= end:
        value = util(moment) if callable(util) else util
        rows.append(GpuSample(gpu_id=gpu_id, time=moment, utilization_pct=value))
        moment += step
    GpuSample.objects.bulk_create(rows, ignore_conflicts=True)


def last(minutes):
    return NOW - timedelta(minutes=minutes)


def stopped(instance) -> bool:
    instance.refresh_from_db()
    return instance.state in (State.STOPPING, State.STOPPED)


def test_an_idle_instance_stops_with_its_reason_an_audit_row_and_a_notice(
    world, django_capture_on_commit_callbacks
):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 2)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        report = services.idle_watch(now=NOW)
    assert report.stopped_idle == [instance.pk]
    assert stopped(instance) and instance.desired_state == "stopped"
    event = InstanceEvent.objects.filter(instance=instance, to_state=State.STOPPING).get()
    assert event.reason == "Stopped after 30 minutes idle (GPUs below 5%)"
    assert event.actor_label == "system"
    assert AuditEvent.objects.filter(action="instance.stop", target_id=str(instance.pk)).exists()
    assert [m.to for m in mail.outbox] == [[world.owner.email]]
    assert "below 5% for 30 minutes" in mail.outbox[0].body
    assert mail.outbox[0].subject == "box was stopped: its GPUs were idle"


def test_a_rerun_stops_nothing_twice_and_sends_no_second_notice(
    world, django_capture_on_commit_callbacks
):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 0)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.idle_watch(now=NOW)
        again = services.idle_watch(now=NOW + timedelta(minutes=1))
    assert again.stopped_idle == []
    assert len(mail.outbox) == 1
    assert InstanceEvent.objects.filter(instance=instance, to_state=State.STOPPING).count() == 1


def test_a_busy_instance_keeps_running(world):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, lambda t: 2 if t < last(3) else 60)  # busy again lately
    assert services.idle_verdict(instance, NOW).why == "busy"
    assert services.idle_watch(now=NOW).stopped_idle == []
    assert not stopped(instance)


def test_the_threshold_is_below_not_at(world):
    instance = running(world, idle_stop_threshold_pct=10)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 10)
    assert not services.idle_verdict(instance, NOW).idle
    GpuSample.objects.all().delete()
    samples(gpu, last(40), NOW, 9)
    assert services.idle_verdict(instance, NOW).idle


def test_no_samples_is_never_idle(world):
    instance = running(world)
    assert services.idle_verdict(instance, NOW).why == "no_samples"
    assert services.idle_watch(now=NOW).stopped_idle == []
    assert not stopped(instance)


def test_a_window_covered_only_in_part_is_not_idle(world):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(20), NOW, 0)  # the agent started 20 minutes ago: a gap at the start
    assert services.idle_verdict(instance, NOW).why == "gap"
    samples(gpu, last(30), last(25), 0)  # the start is covered, but 25 to 20 minutes ago not
    assert services.idle_verdict(instance, NOW).why == "gap"
    samples(gpu, last(25), last(20), 0)
    assert services.idle_verdict(instance, NOW).idle


def test_the_agent_falling_silent_lately_is_not_idle(world):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), last(5), 0)
    assert services.idle_verdict(instance, NOW).why == "gap"


def test_readings_without_utilisation_are_missing_data(world):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, lambda t: None if t > last(10) else 0)
    assert services.idle_verdict(instance, NOW).why == "missing_readings"


def test_several_gpus_one_busy_keeps_it_running_all_idle_stops_it(world):
    instance = running(world, instance_type="gpu_2x_h200")
    first, second = gpu_ids_of(instance)
    samples(first, last(40), NOW, 1)
    samples(second, last(40), NOW, 95)
    assert services.idle_verdict(instance, NOW).why == "busy"
    assert services.idle_watch(now=NOW).stopped_idle == []
    GpuSample.objects.filter(gpu_id=second).update(utilization_pct=3)
    assert services.idle_watch(now=NOW).stopped_idle == [instance.pk]


def test_a_mig_slice_is_judged_by_its_whole_gpu(world):
    instance = running(world, instance_type="mig_1g_18gb")
    (gpu,) = gpu_ids_of(instance)
    assert gpu == world.hosts[0].gpus.get(uuid=instance.allocation.gpu_slots[0]["gpu"]).pk
    samples(gpu, last(40), NOW, 50)  # another slice of the same GPU is busy
    assert services.idle_verdict(instance, NOW).why == "busy"
    GpuSample.objects.filter(gpu_id=gpu).update(utilization_pct=0)
    assert services.idle_watch(now=NOW).stopped_idle == [instance.pk]


def test_idle_stop_off_never_stops(world):
    instance = running(world, idle_stop_enabled=False)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 0)
    assert services.idle_watch(now=NOW).stopped_idle == []
    assert not stopped(instance)


def test_started_again_after_an_idle_stop_it_is_judged_only_since_its_start(world):
    instance = running(world)
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 0)
    assert services.idle_watch(now=NOW).stopped_idle == [instance.pk]
    settle(instance)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="start")
    instance = settle(instance)
    assert instance.state == State.RUNNING
    restarted = NOW + timedelta(minutes=2)
    Instance.objects.filter(pk=instance.pk).update(running_since=restarted)
    instance.refresh_from_db()
    (gpu,) = gpu_ids_of(instance)  # possibly another GPU now
    samples(gpu, last(40), restarted + timedelta(minutes=20), 0)
    # 20 minutes after the start: the old idle samples do not count
    assert services.idle_verdict(instance, restarted + timedelta(minutes=20)).why == (
        "not_running_long_enough"
    )
    assert services.idle_watch(now=restarted + timedelta(minutes=20)).stopped_idle == []
    samples(gpu, restarted, restarted + timedelta(minutes=31), 0)
    assert services.idle_watch(now=restarted + timedelta(minutes=31)).stopped_idle == [instance.pk]


def test_the_notice_goes_to_the_launcher_owners_and_admins_each_in_their_language(
    world, django_capture_on_commit_callbacks
):
    admin = factories.member(world.org, "admin")
    admin.language = "zh-hans"
    admin.save(update_fields=["language"])
    launcher = factories.member(world.org, "member")
    factories.member(world.org, "viewer")
    factories.member(world.org, "billing")
    instance, _ = services.instance_launch(
        actor=factories.actor(world.org, launcher),
        request=world.request(name="train", idle_stop_enabled=True),
    )
    instance = settle(instance)
    Instance.objects.filter(pk=instance.pk).update(running_since=last(60))
    (gpu,) = gpu_ids_of(instance)
    samples(gpu, last(40), NOW, 0)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.idle_watch(now=NOW)
    by_address = {m.to[0]: m for m in mail.outbox}
    assert set(by_address) == {world.owner.email, admin.email, launcher.email}
    chinese = by_address[admin.email]
    assert chinese.subject == "train 已停止：其 GPU 处于空闲状态"  # noqa: RUF001
    assert "低于 5%" in chinese.body and "30 分钟" in chinese.body
    assert by_address[launcher.email].body.startswith("Hello,")


# --- scheduled shutdown -----------------------------------------------------------------------


def test_a_scheduled_stop_fires_once_and_clears(world, django_capture_on_commit_callbacks):
    at = NOW + timedelta(hours=2)
    instance = running(world, idle_stop_enabled=False, scheduled_stop_at=at)
    assert instance.scheduled_stop_at == at
    assert services.idle_watch(now=at - timedelta(minutes=1)).stopped_scheduled == []
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        report = services.idle_watch(now=at)
        again = services.idle_watch(now=at + timedelta(minutes=1))
    assert report.stopped_scheduled == [instance.pk] and again.stopped_scheduled == []
    assert stopped(instance) and instance.scheduled_stop_at is None
    event = InstanceEvent.objects.get(instance=instance, to_state=State.STOPPING)
    assert event.reason == "Scheduled shutdown"
    assert len(mail.outbox) == 1 and "scheduled" in mail.outbox[0].subject


def test_a_schedule_that_passes_while_stopped_is_cleared_and_does_not_stop_it_later(world):
    at = NOW + timedelta(hours=2)
    instance = running(world, idle_stop_enabled=False, scheduled_stop_at=at)
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    settle(instance)
    assert services.idle_watch(now=at).schedules_cleared == [instance.pk]
    instance.refresh_from_db()
    assert instance.scheduled_stop_at is None and instance.state == State.STOPPED


def test_the_settings_service_sets_clears_and_records(world):
    instance = running(world, idle_stop_enabled=False)
    at = timezone.now() + timedelta(days=1)
    services.instance_stop_settings_set(
        actor=world.actor(),
        instance_id=instance.pk,
        idle_stop_enabled=True,
        idle_stop_threshold_pct=12,
        idle_stop_minutes=45,
        scheduled_stop_at=at,
    )
    instance.refresh_from_db()
    assert (instance.idle_stop_enabled, instance.idle_stop_threshold_pct) == (True, 12)
    assert (instance.idle_stop_minutes, instance.scheduled_stop_at) == (45, at)
    assert AuditEvent.objects.filter(action="instance.stop_settings").count() == 1
    services.instance_stop_settings_set(
        actor=world.actor(), instance_id=instance.pk, scheduled_stop_at=None
    )
    instance.refresh_from_db()
    assert instance.scheduled_stop_at is None and instance.idle_stop_minutes == 45


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ({"idle_stop_threshold_pct": 0}, "idle_stop_threshold_pct"),
        ({"idle_stop_threshold_pct": 101}, "idle_stop_threshold_pct"),
        ({"idle_stop_minutes": 9}, "idle_stop_minutes"),
        ({"idle_stop_minutes": 1441}, "idle_stop_minutes"),
        ({"scheduled_stop_at": NOW - timedelta(minutes=1)}, "scheduled_stop_at"),
    ],
)
def test_bad_settings_are_refused_per_field_and_nothing_is_written(world, values, bad):
    instance = running(world, idle_stop_enabled=False)
    with pytest.raises(InvalidInput) as refused:
        services.instance_stop_settings_set(
            actor=world.actor(), instance_id=instance.pk, idle_stop_enabled=True, **values
        )
    assert refused.value.code == "invalid" and set(refused.value.details) == {bad}
    instance.refresh_from_db()
    assert not instance.idle_stop_enabled
    with pytest.raises(InvalidInput) as refused:
        services.instance_launch(actor=world.actor(), request=world.request(name="other", **values))
    assert set(refused.value.details) == {bad}
    assert not Instance.objects.filter(name="other").exists()


def test_a_viewer_cannot_change_the_settings(world):
    from portal.errors import PermissionDenied

    instance = running(world, idle_stop_enabled=False)
    with pytest.raises(PermissionDenied):
        services.instance_stop_settings_set(
            actor=world.actor("viewer"), instance_id=instance.pk, idle_stop_enabled=True
        )


def test_the_periodic_task_runs_the_sweep(world):
    from portal.compute import tasks
    from portal.scheduled import SCHEDULE

    assert SCHEDULE["instances-idle-watch"]["task"] == "compute.idle_watch"
    instance = running(world, idle_stop_enabled=False)
    Instance.objects.filter(pk=instance.pk).update(scheduled_stop_at=NOW)
    with time_machine.travel(NOW + timedelta(seconds=1), tick=False):
        assert tasks.idle_watch.delay().get() == {
            "stopped_idle": [],
            "stopped_scheduled": [instance.pk],
            "schedules_cleared": [],
        }


def test_a_schedule_waits_for_an_instance_on_its_way_to_running(world):
    at = NOW + timedelta(hours=2)
    instance = running(world, idle_stop_enabled=False, scheduled_stop_at=at)
    Instance.objects.filter(pk=instance.pk).update(state=State.REBOOTING)
    report = services.idle_watch(now=at)
    assert report.stopped_scheduled == [] and report.schedules_cleared == []
    instance.refresh_from_db()
    assert instance.scheduled_stop_at == at
    Instance.objects.filter(pk=instance.pk).update(state=State.RUNNING)
    assert services.idle_watch(now=at + timedelta(minutes=1)).stopped_scheduled == [instance.pk]
