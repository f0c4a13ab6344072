"""The instance page's "Start without GPUs": offered for a stopped instance where the region has
a no-GPU price, confirmed with that price, and the page then says it runs without GPUs."""

from decimal import Decimal

import pytest
from django.test import Client
from django.utils import translation

from portal.compute import services
from portal.metering.lifecycle_usage import NO_GPU
from portal.metering.models import MeterPrice
from portal.metering.services import builtin_meters
from tests import factories
from tests.factories import settle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def owner_client(org, owner):
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def no_gpu_price(db):
    return MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU], currency="USD", price_per_unit=Decimal("0.80")
    )


def stopped(launch, name="alpha"):
    instance = settle(launch(name))
    services.instance_action(
        actor=factories.actor(instance.organization, role="owner"),
        instance_id=instance.pk,
        action="stop",
    )
    return settle(instance)


def text(response) -> str:
    return response.content.decode()


CONFIRM = (
    'hx-confirm="Start alpha without GPUs? It gets 4 vCPUs and 16 GiB of RAM and no GPU, for '
    "copying data or setting up, billed at the no-GPU price of 0.80 USD/h while it runs."
)


def test_a_stopped_instance_may_start_without_gpus_at_the_price_the_button_says(
    owner_client, launch, no_gpu_price
):
    instance = stopped(launch)
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert 'id="action-start-without-gpus"' in page and ">Start without GPUs</button>" in page
    assert CONFIRM in page
    assert '<input type="hidden" name="gpus" value="false">' in page
    assert 'Without GPUs (no-GPU mode): <span class="mono">0.80 USD/h</span>' in page
    assert 'hx-confirm="Start alpha? Billing for its GPUs resumes' in page  # the normal start

    body = text(owner_client.post(f"/instances/{instance.pk}/start/", {"gpus": "false"}, **HTMX))
    assert "Starting alpha without GPUs." in body and "Starting without GPUs" in body
    instance = settle(instance)
    assert instance.state == "running" and instance.gpus is False
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "Running without GPUs" in page
    assert "4 vCPUs, 16 GiB RAM, billed at 0.80 USD/h. Stop it and start it again" in page
    assert "(none while it runs without GPUs)" in page
    assert f"ssh ubuntu@{instance.ip_address}" in page
    assert "action-start-without-gpus" not in page  # only for stopped instances
    assert "Start without GPUs requested" in page  # the event

    # a stop and a normal start: GPUs again, and the page no longer says otherwise
    owner_client.post(f"/instances/{instance.pk}/stop/")
    settle(instance)
    owner_client.post(f"/instances/{instance.pk}/start/")
    instance = settle(instance)
    assert instance.gpus is True
    assert "Running without GPUs" not in text(owner_client.get(f"/instances/{instance.pk}/"))


def test_not_offered_without_a_no_gpu_price_nor_to_viewers(owner_client, launch, org):
    instance = stopped(launch)
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "Start without GPUs" not in page and 'hx-confirm="Start alpha?' in page
    body = text(owner_client.post(f"/instances/{instance.pk}/start/", {"gpus": "false"}, **HTMX))
    assert "Starting without GPUs is not offered in us-east-1 in USD." in body
    instance.refresh_from_db()
    assert instance.state == "stopped"

    MeterPrice.objects.create(
        meter=builtin_meters()[NO_GPU], currency="USD", price_per_unit=Decimal("0.80")
    )
    viewer = Client()
    viewer.force_login(factories.member(org, "viewer"))
    assert "Start without GPUs" not in text(viewer.get(f"/instances/{instance.pk}/"))


def test_in_chinese(owner_client, launch, no_gpu_price):
    instance = stopped(launch)
    with translation.override("zh-hans"):
        page = text(owner_client.get(f"/instances/{instance.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans"))
    assert "Start without GPUs" not in page
    assert "不带 GPU 启动" in page and "0.80 USD" in page
