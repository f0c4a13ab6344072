"""The automatic stop settings as customers set and read them: the launch form, the instance
page (htmx and a plain form), and the API (create fields and PATCH .../auto-stop), in English
and Chinese, with bad input refused per field and nothing written."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from portal.compute.lifecycle import State
from portal.compute.models import Instance, InstanceEvent
from tests import factories
from tests.factories import settle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]
HTMX = {"HTTP_HX_REQUEST": "true"}
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}


@pytest.fixture
def owner_client(owner):
    client = Client()
    client.force_login(owner)
    return client


def text(response) -> str:
    return response.content.decode()


def future(hours=3) -> datetime:
    return (timezone.now() + timedelta(hours=hours)).replace(second=0, microsecond=0)


def form(**overrides) -> dict:
    data = {
        "idle_stop_enabled": "on",
        "idle_stop_threshold_pct": "5",
        "idle_stop_minutes": "30",
        "scheduled_stop_at": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_the_page_says_in_words_when_it_stops_by_itself(owner_client, launch):
    instance = settle(launch("alpha"))
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "Idle stop is off: it keeps running until someone stops it." in page
    assert "No scheduled shutdown." in page
    assert "It never stops on missing data" in page and "MIG slice" in page
    at = datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
    Instance.objects.filter(pk=instance.pk).update(
        idle_stop_enabled=True,
        idle_stop_threshold_pct=7,
        idle_stop_minutes=45,
        scheduled_stop_at=at,
    )
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "Stops by itself when its GPUs stay below 7% for 45 minutes." in page
    assert "Scheduled to stop at 2031-05-06 07:08 UTC." in page
    chinese = text(owner_client.get(f"/instances/{instance.pk}/", **ZH))
    assert "当其 GPU 利用率持续 45 分钟低于 7% 时自动停止。" in chinese
    assert "计划于 2031-05-06 07:08 UTC 停止。" in chinese
    assert "数据缺失时绝不会停止" in chinese and "Stops by itself" not in chinese


def test_a_plain_form_post_saves_and_goes_back_to_the_page(owner_client, launch):
    instance = settle(launch("alpha"))
    at = future()
    response = owner_client.post(
        f"/instances/{instance.pk}/auto-stop/",
        form(idle_stop_threshold_pct="12", scheduled_stop_at=at.strftime("%Y-%m-%dT%H:%M")),
    )
    assert response.status_code == 302 and response["Location"] == f"/instances/{instance.pk}/"
    instance.refresh_from_db()
    assert instance.idle_stop_enabled and instance.idle_stop_threshold_pct == 12
    assert instance.scheduled_stop_at == at
    page = text(owner_client.get(response["Location"]))
    assert "Automatic stop settings saved." in page
    assert "Stops by itself when its GPUs stay below 12% for 30 minutes." in page
    assert InstanceEvent.objects.filter(
        instance=instance, reason="Automatic stop settings changed"
    ).exists()


def test_htmx_gets_the_panel_back_and_can_clear_the_schedule(owner_client, launch):
    instance = settle(launch("alpha"))
    Instance.objects.filter(pk=instance.pk).update(scheduled_stop_at=future())
    response = owner_client.post(
        f"/instances/{instance.pk}/auto-stop/",
        form(idle_stop_enabled=None, scheduled_stop_at=""),
        **HTMX,
    )
    body = text(response)
    assert response.status_code == 200
    assert body.lstrip().startswith('<section class="panel" id="stop-settings-panel"')
    assert "No scheduled shutdown." in body and "Idle stop is off" in body
    assert "Automatic stop settings saved." in body and "<html" not in body
    instance.refresh_from_db()
    assert instance.scheduled_stop_at is None and not instance.idle_stop_enabled


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"idle_stop_threshold_pct": "0"}, "idle_stop_threshold_pct", "greater than or equal to 1"),
        ({"idle_stop_minutes": "5"}, "idle_stop_minutes", "greater than or equal to 10"),
        ({"idle_stop_minutes": "2000"}, "idle_stop_minutes", "less than or equal to 1440"),
        ({"scheduled_stop_at": "2020-01-01T10:00"}, "scheduled_stop_at", "must be in the future"),
        ({"scheduled_stop_at": "tomorrow"}, "scheduled_stop_at", "Enter a valid date/time"),
    ],
)
def test_bad_input_is_shown_at_its_field_with_422_and_nothing_changes(
    owner_client, launch, overrides, field, message
):
    instance = settle(launch("alpha"))
    for extra in ({}, HTMX):
        response = owner_client.post(
            f"/instances/{instance.pk}/auto-stop/", form(**overrides), **extra
        )
        assert response.status_code == 422
        body = text(response)
        error = body.split(f'id="id_{field}_error"', 1)[1].split("</ul>", 1)[0]
        assert message in error
    instance.refresh_from_db()
    assert not instance.idle_stop_enabled and instance.scheduled_stop_at is None


def test_a_viewer_sees_the_settings_but_no_form_and_cannot_post(org, launch):
    instance = settle(launch("alpha"))
    viewer = Client()
    viewer.force_login(factories.member(org, "viewer"))
    page = text(viewer.get(f"/instances/{instance.pk}/"))
    assert "Idle stop is off" in page and 'id="stop-settings-form"' not in page
    response = viewer.post(f"/instances/{instance.pk}/auto-stop/", form())
    assert response.status_code == 403
    instance.refresh_from_db()
    assert not instance.idle_stop_enabled


def test_the_launch_form_sets_them(owner_client, org, ssh_key, compute_catalog):
    at = future(5)
    response = owner_client.post(
        "/instances/launch/",
        {
            "instance_type": "gpu_1x_h200",
            "region": "us-east-1",
            "image": "ubuntu-cuda",
            "ssh_key_ids": [ssh_key.pk],
            "name": "sleepy",
            **form(idle_stop_minutes="60", scheduled_stop_at=at.strftime("%Y-%m-%dT%H:%M")),
        },
    )
    assert response.status_code == 302
    instance = Instance.objects.get(organization=org, name="sleepy")
    assert (instance.idle_stop_enabled, instance.idle_stop_minutes) == (True, 60)
    assert instance.scheduled_stop_at == at
    page = text(owner_client.get("/instances/launch/"))
    assert 'name="idle_stop_enabled"' in page and 'type="datetime-local"' in page
    response = owner_client.post(
        "/instances/launch/",
        {
            "instance_type": "gpu_1x_h200",
            "region": "us-east-1",
            "image": "ubuntu-cuda",
            "ssh_key_ids": [ssh_key.pk],
            "name": "too-late",
            **form(scheduled_stop_at="2020-01-01T00:00"),
        },
    )
    assert response.status_code == 422
    assert "must be in the future" in text(response).split('id="id_scheduled_stop_at_error"')[1]
    assert not Instance.objects.filter(name="too-late").exists()


def test_the_event_of_an_idle_stop_reads_in_chinese(owner_client, launch):
    from portal.compute.services import idle

    instance = settle(launch("alpha"))
    args = {"minutes": 30, "threshold": 5}
    InstanceEvent.objects.create(
        instance=instance,
        actor_label="system",
        from_state=State.RUNNING,
        to_state=State.STOPPING,
        reason=idle.IDLE_REASON % args,
        detail={"reason_msgid": idle.IDLE_REASON, "reason_args": args},
    )
    assert "Stopped after 30 minutes idle (GPUs below 5%)" in text(
        owner_client.get(f"/instances/{instance.pk}/")
    )
    chinese = text(owner_client.get(f"/instances/{instance.pk}/", **ZH))
    assert "空闲 30 分钟后已停止（GPU 利用率低于 5%）" in chinese  # noqa: RUF001


# --- the API ----------------------------------------------------------------------------------


def api_body(ssh_key, **extra) -> dict:
    return {
        "name": "api-box",
        "instance_type": "gpu_1x_h200",
        "region": "us-east-1",
        "ssh_key_ids": [ssh_key.pk],
        **extra,
    }


def test_the_api_launches_with_them_and_shows_them(key_client, ssh_key, compute_catalog):
    client = key_client("member")
    at = future(4)
    response = client.post(
        "/api/v1/instances",
        api_body(
            ssh_key,
            idle_stop_enabled=True,
            idle_stop_threshold_pct=3,
            idle_stop_minutes=20,
            scheduled_stop_at=at.isoformat(),
        ),
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["idle_stop_enabled"], body["idle_stop_threshold_pct"]) == (True, 3)
    assert body["idle_stop_minutes"] == 20
    assert datetime.fromisoformat(body["scheduled_stop_at"]) == at
    listed = client.get("/api/v1/instances").json()["results"][0]
    assert {k: listed[k] for k in body if k.startswith(("idle", "scheduled"))} == {
        k: body[k] for k in body if k.startswith(("idle", "scheduled"))
    }
    filtered = client.get("/api/v1/instances?name=api").json()["results"][0]
    assert filtered["idle_stop_minutes"] == 20 and filtered["scheduled_stop_at"] is not None


def test_the_api_launch_without_them_gets_the_defaults(key_client, ssh_key, compute_catalog):
    body = key_client().post("/api/v1/instances", api_body(ssh_key), format="json").json()
    assert body["idle_stop_enabled"] is False and body["scheduled_stop_at"] is None
    assert (body["idle_stop_threshold_pct"], body["idle_stop_minutes"]) == (5, 30)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"idle_stop_threshold_pct": 101}, "idle_stop_threshold_pct"),
        ({"idle_stop_minutes": 9}, "idle_stop_minutes"),
        ({"scheduled_stop_at": "2020-01-01T00:00:00Z"}, "scheduled_stop_at"),
        ({"idle_stop_enabled": "maybe"}, "idle_stop_enabled"),
    ],
)
def test_the_api_refuses_bad_launch_settings_per_field(
    key_client, ssh_key, compute_catalog, extra, field
):
    response = key_client().post("/api/v1/instances", api_body(ssh_key, **extra), format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["details"]) == {field}
    assert not Instance.objects.exists()


def test_the_api_sets_and_clears_them(key_client, launch):
    instance = settle(launch("alpha"))
    client = key_client("member")
    url = f"/api/v1/instances/{instance.pk}/auto-stop"
    at = future(6)
    response = client.patch(
        url, {"idle_stop_enabled": True, "scheduled_stop_at": at.isoformat()}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["idle_stop_enabled"] is True
    assert datetime.fromisoformat(response.json()["scheduled_stop_at"]) == at
    response = client.patch(url, {"scheduled_stop_at": None}, format="json")
    assert response.json()["scheduled_stop_at"] is None and response.json()["idle_stop_enabled"]
    instance.refresh_from_db()
    assert instance.scheduled_stop_at is None and instance.idle_stop_enabled


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            {"idle_stop_minutes": 5, "idle_stop_threshold_pct": 0},
            {"idle_stop_minutes", "idle_stop_threshold_pct"},
        ),
        ({"scheduled_stop_at": "2020-01-01T00:00:00Z"}, {"scheduled_stop_at"}),
        ({}, {"non_field_errors"}),
    ],
)
def test_the_api_refuses_bad_settings_and_writes_nothing(key_client, launch, body, fields):
    instance = settle(launch("alpha"))
    response = key_client().patch(
        f"/api/v1/instances/{instance.pk}/auto-stop",
        {"idle_stop_enabled": True, **body} if body else body,
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["details"]) == fields
    instance.refresh_from_db()
    assert not instance.idle_stop_enabled


def test_the_api_needs_the_manage_role_and_the_organisation(key_client, launch):
    instance = settle(launch("alpha"))
    url = f"/api/v1/instances/{instance.pk}/auto-stop"
    assert (
        key_client("viewer").patch(url, {"idle_stop_enabled": True}, format="json").status_code
        == 403
    )
    other = factories.organization()
    stranger = key_client("owner", organization=other)
    assert stranger.patch(url, {"idle_stop_enabled": True}, format="json").status_code == 404
    instance.refresh_from_db()
    assert not instance.idle_stop_enabled
