"""Stopped instances are released after ``COMPUTE_RELEASE_STOPPED_AFTER`` (15 days), with a
notice 7 days and 1 day before, once each; their volumes are always kept. The instance page,
the instances list and the API say when."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core import mail
from django.test import Client

from portal.accounts.models import AuditEvent
from portal.catalog.models import GpuSlotClaim
from portal.compute import services, tasks
from portal.compute.lifecycle import State
from portal.compute.models import Instance, ReleaseNotice, Volume
from portal.compute.services.release import NOTICE_SENT, RELEASED
from portal.provisioning.base import CapacityError
from portal.scheduled import SCHEDULE
from tests import factories
from tests.factories import World, settle

pytestmark = pytest.mark.django_db

T0 = datetime(2030, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}


@pytest.fixture
def world(memory_backend, settings):
    settings.SITE_URL = "https://gpu.example"
    return World()


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def run(world, instance, *actions) -> Instance:
    for action in actions:
        services.instance_action(actor=world.actor(), instance_id=instance.pk, action=action)
        services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    return instance


def stopped(world, name="box", **extra) -> Instance:
    """An instance launched, run and stopped now, through the services and the backend."""
    instance, _ = services.instance_launch(
        actor=world.actor(), request=world.request(name, **extra)
    )
    services.instance_sync(instance_id=instance.pk)
    return run(world, instance, "stop")


def sweep(django_capture_on_commit_callbacks) -> services.ReleaseReport:
    with django_capture_on_commit_callbacks(execute=True):
        return services.release_due()


def outbox() -> list[tuple[str, str]]:
    sent = [(m.to[0], m.subject) for m in mail.outbox]
    mail.outbox.clear()
    return sorted(sent)


def test_notices_go_once_each_at_their_moment_then_the_release(
    world, clock, django_capture_on_commit_callbacks
):
    admin = factories.member(world.org, "admin")
    admin.language = "zh-hans"
    admin.save(update_fields=["language"])
    factories.member(world.org, "billing")  # billing and viewers hear nothing of instances
    factories.member(world.org, "viewer")
    launcher = factories.member(world.org, "member")
    instance, _ = services.instance_launch(
        actor=factories.actor(world.org, launcher), request=world.request("box")
    )
    services.instance_sync(instance_id=instance.pk)
    instance = run(world, instance, "stop")
    assert instance.state == State.STOPPED
    assert instance.stopped_since == T0 and instance.release_at == T0 + 15 * DAY
    assert services.release_at(instance) == T0 + 15 * DAY

    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    clock.move_to(T0 + 8 * DAY - timedelta(minutes=1))
    assert sweep(django_capture_on_commit_callbacks).notified == ()
    assert mail.outbox == []

    clock.move_to(T0 + 8 * DAY)  # 7 days before
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    english = next(m for m in mail.outbox if m.to == [world.owner.email])
    chinese = next(m for m in mail.outbox if m.to == [admin.email])
    assert english.subject == "box will be released on 16 Dec 2030, 12:00 UTC"
    assert "released on 16 Dec 2030, 12:00 UTC (in 7 days)" in english.body
    assert "Its volumes are kept" in english.body
    assert "To keep it, start it before then" in english.body
    assert f"https://gpu.example/instances/{instance.pk}/" in english.body
    assert chinese.subject == "box 将于 2030年12月16日 12:00 UTC 释放"
    assert "2030年12月16日 12:00 UTC" in chinese.body and "7天" in chinese.body
    assert f"https://gpu.example/instances/{instance.pk}/" in chinese.body
    assert sorted(m.to[0] for m in mail.outbox) == sorted(
        [world.owner.email, admin.email, launcher.email]
    )
    mail.outbox.clear()
    event = instance.events.order_by("id").last()
    assert event.reason == NOTICE_SENT and event.actor_label == "system"
    assert AuditEvent.objects.filter(action="instance.release_notice").count() == 1

    # a rerun, and every sweep until the next notice, sends nothing again
    for moment in (T0 + 8 * DAY, T0 + 10 * DAY, T0 + 14 * DAY - timedelta(minutes=1)):
        clock.move_to(moment)
        assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    assert mail.outbox == []

    clock.move_to(T0 + 14 * DAY + timedelta(minutes=10))  # a day before (the sweep's next run)
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    assert len(outbox()) == 3
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    assert mail.outbox == []
    assert [n.lead for n in ReleaseNotice.objects.filter(instance=instance)] == [7 * DAY, DAY]

    clock.move_to(T0 + 15 * DAY - timedelta(seconds=1))
    assert sweep(django_capture_on_commit_callbacks).released == ()
    clock.move_to(T0 + 15 * DAY)
    assert sweep(django_capture_on_commit_callbacks).released == (instance.pk,)
    instance.refresh_from_db()  # the sync task (eager here) ran after commit
    assert instance.state == State.TERMINATED and instance.desired_state == "terminated"
    event = instance.events.get(reason=RELEASED)
    assert (event.from_state, event.to_state) == ("stopped", "terminating")
    assert event.actor_label == "system" and event.detail["stopped_days"] == 15
    assert AuditEvent.objects.filter(action="instance.release", target_id=str(instance.pk)).exists()
    assert mail.outbox == []
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())


def test_a_release_keeps_every_volume_even_those_marked_delete_on_termination(
    world, clock, django_capture_on_commit_callbacks
):
    data = services.volume_create(
        actor=world.actor(), name="data", region=world.region.code, size_gb=100
    )
    instance = stopped(world, volume_ids=(data.pk,), new_volume_gb=50)
    Volume.objects.filter(name="box-data").update(delete_on_termination=True)
    assert set(Volume.objects.values_list("state", flat=True)) == {"in_use"}
    for moment in (T0 + 8 * DAY, T0 + 14 * DAY, T0 + 15 * DAY):
        clock.move_to(moment)
        sweep(django_capture_on_commit_callbacks)
    instance = settle(instance)
    assert instance.state == State.TERMINATED and not GpuSlotClaim.objects.exists()
    assert {v.name: (v.state, v.instance_id) for v in Volume.objects.all()} == {
        "data": ("available", None),
        "box-data": ("available", None),
    }


def test_starting_it_resets_the_clock_and_a_later_stop_gets_fresh_notices(
    world, clock, django_capture_on_commit_callbacks
):
    instance = stopped(world)
    clock.move_to(T0 + 8 * DAY)
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    clock.move_to(T0 + 10 * DAY)
    instance = run(world, instance, "start")
    assert instance.state == State.RUNNING
    assert instance.release_at is None and instance.stopped_since is None
    clock.move_to(T0 + 20 * DAY)  # long past the first stop's release: a running one stays
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    instance = run(world, instance, "stop")
    assert instance.release_at == T0 + 35 * DAY
    outbox()
    clock.move_to(T0 + 28 * DAY)
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)  # fresh
    assert [subject for _to, subject in outbox()] == [
        "box will be released on 5 Jan 2031, 12:00 UTC"
    ]
    assert ReleaseNotice.objects.filter(instance=instance).count() == 2


def test_a_start_the_host_refused_keeps_the_clock_with_at_least_a_day_left(
    world, memory_backend, clock, django_capture_on_commit_callbacks
):
    instance = stopped(world)
    clock.move_to(T0 + 5 * DAY)
    memory_backend.fail_next("start", CapacityError("the host is full"))
    instance = run(world, instance, "start")
    assert instance.state == State.STOPPED  # starting → refused → stopped
    assert instance.stopped_since == T0 and instance.release_at == T0 + 15 * DAY

    for moment in (T0 + 8 * DAY, T0 + 14 * DAY):
        clock.move_to(moment)
        assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    # tried again at the last moment, refused again: a day to try once more
    clock.move_to(T0 + 15 * DAY - timedelta(hours=2))
    memory_backend.fail_next("start", CapacityError("the host is full"))
    instance = run(world, instance, "start")
    assert instance.state == State.STOPPED
    assert instance.release_at == T0 + 16 * DAY - timedelta(hours=2)
    clock.move_to(T0 + 15 * DAY)
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    clock.move_to(T0 + 16 * DAY)
    assert sweep(django_capture_on_commit_callbacks).released == (instance.pk,)


def test_a_late_sweep_still_sends_one_notice_and_gives_a_day_before_releasing(
    world, clock, django_capture_on_commit_callbacks
):
    """The sweep did not run for weeks (or the instance was stopped before releases existed):
    the one notice due goes, and the release waits a day after it."""
    instance = stopped(world)
    clock.move_to(T0 + 20 * DAY)
    report = sweep(django_capture_on_commit_callbacks)
    assert report == services.ReleaseReport(notified=(instance.pk,), released=())
    assert [subject for _to, subject in outbox()] == [
        "box will be released on 22 Dec 2030, 12:00 UTC"
    ]
    instance.refresh_from_db()
    assert instance.state == State.STOPPED and instance.release_at == T0 + 21 * DAY
    assert [n.lead for n in ReleaseNotice.objects.filter(instance=instance)] == [DAY]
    clock.move_to(T0 + 21 * DAY)
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport(
        notified=(), released=(instance.pk,)
    )


def test_a_notice_whose_moment_passed_at_the_stop_is_still_sent_once(
    world, clock, settings, django_capture_on_commit_callbacks
):
    settings.COMPUTE_RELEASE_STOPPED_AFTER = 3 * DAY  # less than the first notice's 7 days
    instance = stopped(world)
    assert instance.release_at == T0 + 3 * DAY
    clock.move_to(T0 + timedelta(minutes=10))
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    assert [subject for _to, subject in outbox()] == [
        "box will be released on 4 Dec 2030, 12:00 UTC"  # the real moment: not moved
    ]
    assert sweep(django_capture_on_commit_callbacks).notified == ()
    clock.move_to(T0 + 2 * DAY)
    assert sweep(django_capture_on_commit_callbacks).notified == (instance.pk,)
    clock.move_to(T0 + 3 * DAY)
    assert sweep(django_capture_on_commit_callbacks).released == (instance.pk,)


def test_running_starting_and_terminating_instances_are_never_released(
    world, clock, django_capture_on_commit_callbacks
):
    running, _ = services.instance_launch(actor=world.actor(), request=world.request("run"))
    services.instance_sync(instance_id=running.pk)
    starting = stopped(world, "starting")
    services.instance_action(actor=world.actor(), instance_id=starting.pk, action="start")
    ending = stopped(world, "ending")
    services.instance_action(actor=world.actor(), instance_id=ending.pk, action="terminate")
    # even with a release moment long past
    Instance.objects.update(release_at=T0 - DAY, stopped_since=T0 - 20 * DAY)
    assert sweep(django_capture_on_commit_callbacks) == services.ReleaseReport((), ())
    states = dict(Instance.objects.values_list("name", "state"))
    assert states == {"run": "running", "starting": "starting", "ending": "terminating"}
    assert not ReleaseNotice.objects.exists() and mail.outbox == []


def test_the_task_runs_the_sweep_every_ten_minutes(
    world, clock, django_capture_on_commit_callbacks
):
    instance = stopped(world)
    clock.move_to(T0 + 20 * DAY)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.release_stopped.delay().get() == {"notified": [instance.pk], "released": []}
    clock.move_to(T0 + 21 * DAY)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.release_stopped.delay().get() == {"notified": [], "released": [instance.pk]}
    entry = SCHEDULE["release-stopped-instances"]
    assert entry["task"] == "compute.release_stopped"
    assert entry["schedule"].minute == set(range(0, 60, 10))


# --- what customers see --------------------------------------------------------------------


@pytest.fixture
def show(owner):
    """``show(path)``: the page's HTML as the owner sees it, logged in at the clock's moment."""

    def get(path: str, **headers) -> str:
        client = Client()
        client.force_login(owner)
        return client.get(path, **headers).content.decode()

    return get


@pytest.mark.usefixtures("fast_simulated_backend")
def test_the_page_and_the_list_count_down_in_english_and_chinese(show, org, owner, launch):
    with time_machine.travel(T0, tick=False) as clock:
        instance = settle(launch("alpha"))
        page = show(f"/instances/{instance.pk}/")
        assert 'id="release-countdown"' not in page  # running: nothing to count
        services.instance_action(
            actor=factories.actor(org, owner), instance_id=instance.pk, action="stop"
        )
        instance = settle(instance)
        assert instance.state == State.STOPPED
        clock.move_to(T0 + 8 * DAY + timedelta(hours=1))
        page = show(f"/instances/{instance.pk}/")
        countdown = page.split('id="release-countdown">', 1)[1].split("</p>", 1)[0]
        assert countdown == (
            'Released in 6 days 23 hours, on <time datetime="2030-12-16T12:00:00+00:00">'
            "16 Dec 2030, 12:00 UTC</time>. Start it to keep it; volumes are kept."
        )
        assert 'class="notice-inline release-countdown"' in page  # not urgent yet
        chinese = show(f"/instances/{instance.pk}/", **ZH)
        countdown = chinese.split('id="release-countdown">', 1)[1].split("</p>", 1)[0]
        assert "6天 23小时后释放" in countdown and "2030年12月16日 12:00 UTC" in countdown
        assert "启动实例即可保留" in countdown and "Released" not in countdown

        listing = show("/instances/")
        row = listing.split(f'id="instance-row-{instance.pk}"', 1)[1].split("</tr>", 1)[0]
        assert 'title="16 Dec 2030, 12:00 UTC">Released in 6 days</span>' in row
        assert "release-in muted" in row
        row = show("/instances/", **ZH)
        assert "6天后释放" in row

        clock.move_to(T0 + 15 * DAY - timedelta(hours=5))  # a day or less: a warning
        page = show(f"/instances/{instance.pk}/")
        assert 'class="notice-inline release-countdown urgent"' in page
        assert "Released in 5 hours, on" in page
        listing = show("/instances/")
        assert 'release-in urgent" title="16 Dec 2030, 12:00 UTC">Released in 5 hours<' in listing

        clock.move_to(T0 + 15 * DAY + timedelta(minutes=3))  # due: the next sweep releases it
        assert "its release was due on" in show(f"/instances/{instance.pk}/").lower()
        assert 'title="16 Dec 2030, 12:00 UTC">Release due</span>' in show("/instances/")
        assert "即将释放" in show("/instances/", **ZH)


@pytest.mark.usefixtures("fast_simulated_backend")
def test_the_api_gives_release_at_for_a_stopped_instance_only(key_client, org, owner, launch):
    api = key_client("owner")
    with time_machine.travel(T0, tick=False):
        running = settle(launch("running"))
        halted = settle(launch("halted"))
        services.instance_action(
            actor=factories.actor(org, owner), instance_id=halted.pk, action="stop"
        )
        settle(halted)
        assert api.get(f"/api/v1/instances/{running.pk}").json()["release_at"] is None
        body = api.get(f"/api/v1/instances/{halted.pk}").json()
        assert body["release_at"] == "2030-12-16T12:00:00Z"
        rows = {row["name"]: row for row in api.get("/api/v1/instances").json()["results"]}
        assert rows["halted"]["release_at"] == "2030-12-16T12:00:00Z"
        assert rows["running"]["release_at"] is None
        filtered = api.get("/api/v1/instances", {"status": "stopped"}).json()["results"]
        assert [row["release_at"] for row in filtered] == ["2030-12-16T12:00:00Z"]
        schema = api.get("/api/schema/?format=json").json()
        field = schema["components"]["schemas"]["Instance"]["properties"]["release_at"]
        assert field["format"] == "date-time" and field["nullable"] is True
        assert field["readOnly"] is True


def test_instances_already_stopped_get_their_clock_and_both_notices_when_this_is_deployed(
    world, memory_backend, clock
):
    import importlib

    from django.apps import apps

    backfill = importlib.import_module("portal.compute.migrations.0004_release_notices").backfill
    long_ago = stopped(world, "long-ago")
    clock.move_to(T0 + 5 * DAY)
    memory_backend.fail_next("start", CapacityError("the host is full"))
    recent = run(world, stopped(world, "recent"), "start")  # refused: back to stopped
    assert recent.state == State.STOPPED
    clock.move_to(T0 + 12 * DAY)
    Instance.objects.update(stopped_since=None, release_at=None)  # as before the migration
    backfill(apps, None)
    long_ago.refresh_from_db()
    recent.refresh_from_db()
    # the stop after the last run counts; no release sooner than the first notice from now
    assert long_ago.stopped_since == T0 and long_ago.release_at == T0 + 19 * DAY
    assert recent.stopped_since == T0 + 5 * DAY and recent.release_at == T0 + 20 * DAY
