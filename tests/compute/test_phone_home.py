"""A machine's phone-home from inside (cloud-init's ``phone_home`` module): its signed,
single-use URL, what the portal does with the post, and the libvirt backend's
``readiness="phone_home"`` that waits for it."""

import pytest
import yaml
from django.conf import settings
from django.test import Client
from django.urls import reverse

from portal.compute import services
from portal.compute.lifecycle import State
from portal.compute.models import InstanceEvent
from portal.provisioning import phone_home
from portal.provisioning.cloud_init import Seed
from portal.provisioning.models import PhoneHome
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return World()


@pytest.fixture
def booting(world, memory_backend):
    """An instance whose machine is booting (the in-memory machine boots forever)."""
    instance, _ = services.instance_launch(
        actor=world.actor(), request=world.request("boot-sim-hang")
    )
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == State.PROVISIONING
    return instance


def post(url: str, **fields):
    # cloud-init posts a form without any session or CSRF token
    return Client(enforce_csrf_checks=True).post(url, fields)


def test_the_sync_gives_each_machine_its_own_url(booting, memory_backend):
    create = next(call for call in memory_backend.calls if call.method == "create")
    assert create.spec.ready_url == phone_home.url_for(booting.machine_id)
    assert create.spec.ready_url.startswith(
        f"{settings.PROVISIONING_PHONE_HOME_URL}/machines/phone-home/"
    )
    assert phone_home.machine_for(create.spec.ready_url.rstrip("/").rsplit("/", 1)[1]) == (
        booting.machine_id
    )


def test_the_first_post_is_kept_and_wakes_the_sync_the_second_is_refused(
    booting, django_capture_on_commit_callbacks
):
    url = phone_home.url_for(booting.machine_id)
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(url, instance_id=booting.machine_id, hostname="box", pub_key_rsa="x")
    assert response.status_code == 200 and response.json() == {"received": True}
    assert len(callbacks) == 1  # the sync, sent at once
    kept = PhoneHome.objects.get(machine_id=booting.machine_id)
    assert kept.detail == {"instance_id": booting.machine_id, "hostname": "box"}
    event = InstanceEvent.objects.filter(instance=booting).last()
    assert event.detail["stage"] == "phoned_home"
    assert "cloud-init finished its first boot" in event.reason

    again = post(url, instance_id=booting.machine_id, hostname="box")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "phone_home_used"
    assert PhoneHome.objects.count() == 1


def test_a_made_up_or_borrowed_url_is_not_found(booting, world):
    url = phone_home.url_for(booting.machine_id)
    forged = url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:]
    response = post(forged, instance_id=booting.machine_id)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    # a valid URL of another machine does not speak for this one
    other = post(phone_home.url_for("inst-999999"), instance_id="inst-999999")
    assert other.status_code == 404
    assert not PhoneHome.objects.exists()


def test_the_post_must_name_the_machine_and_be_a_post(booting):
    url = phone_home.url_for(booting.machine_id)
    wrong = post(url, instance_id="inst-1-someone-else")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid"
    assert Client().get(url).status_code == 405
    assert not PhoneHome.objects.exists()


def test_a_terminated_machine_cannot_phone_home(booting, world):
    services.instance_action(actor=world.actor(), instance_id=booting.pk, action="terminate")
    services.instance_sync(instance_id=booting.pk)
    booting.refresh_from_db()
    assert booting.state == State.TERMINATED
    response = post(phone_home.url_for(booting.machine_id), instance_id=booting.machine_id)
    assert response.status_code == 404


def test_the_seed_asks_cloud_init_to_phone_home_only_when_given_a_url():
    seed = Seed("inst-7", "box", ("ssh-ed25519 AAAA k",), phone_home_url="http://p/x/")
    document = yaml.safe_load(seed.portal_cloud_config())
    assert document["phone_home"] == {
        "url": "http://p/x/",
        "post": ["instance_id", "hostname", "fqdn"],
        "tries": 10,
    }
    assert "phone_home" not in yaml.safe_load(Seed("inst-7", "box", ()).portal_cloud_config())


def test_the_url_is_reversed_under_the_machine_facing_prefix():
    token = phone_home.token_for("inst-5")
    assert reverse("compute:phone_home", args=[token]) == f"/machines/phone-home/{token}/"
