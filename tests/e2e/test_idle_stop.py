"""Automatic stop in a browser: the instance page's panel says in words when the instance stops
by itself, and its form saves in place (htmx, no reload), in English and Chinese, wide and
narrow; the launch form has the same fields."""

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from portal.accounts import services as account_services
from portal.catalog.demo import load_demo_catalog
from portal.compute import services as compute_services
from portal.compute.models import Instance
from tests import factories
from tests.e2e.helpers import assert_no_reload, mark_document
from tests.factories import settle

pytestmark = pytest.mark.browser


@pytest.fixture
def world(transactional_db, simulated_backend):
    simulated_backend(boot_seconds=0, stop_seconds=0)
    load_demo_catalog()
    org = factories.organization(name="Deep Thought", currency="USD")
    user = factories.user("ford@example.com", email_verified_at=timezone.now())
    factories.member(org, "owner", user)
    key = account_services.ssh_key_create(
        actor=factories.actor(org, user),
        name="ford-laptop",
        public_key=factories.ed25519_public_key("ford@laptop"),
    )
    instance, _ = compute_services.instance_launch(
        actor=factories.actor(org, user),
        request=compute_services.LaunchRequest(
            name="train-llama",
            instance_type="gpu_1x_h200_sxm",
            region="europe-central-1",
            ssh_key_ids=(key.pk,),
        ),
    )
    return user, settle(instance)


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("ford@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Deep Thought", level=1)).to_be_visible()


def test_set_idle_stop_and_a_schedule_on_the_instance_page(
    live_server, world, page: Page, screenshot
):
    user, instance = world
    base = live_server.url
    page.set_viewport_size({"width": 1366, "height": 900})
    log_in(page, base)
    page.goto(f"{base}/instances/{instance.pk}/")
    panel = page.locator("#stop-settings-panel")
    expect(panel).to_contain_text("Idle stop is off")
    mark_document(page)
    panel.get_by_label("Stop it when its GPUs are idle").check()
    panel.get_by_label("For, minutes").fill("45")
    panel.get_by_label("Scheduled stop (optional, UTC)").fill("2031-05-06T07:08")
    panel.get_by_role("button", name="Save").click()
    expect(panel).to_contain_text("Stops by itself when its GPUs stay below 5% for 45 minutes.")
    expect(panel).to_contain_text("Scheduled to stop at 2031-05-06 07:08 UTC.")
    expect(panel).to_contain_text("Automatic stop settings saved.")
    assert_no_reload(page)
    instance.refresh_from_db()
    assert instance.idle_stop_enabled and instance.idle_stop_minutes == 45
    screenshot("wide-en")

    panel.get_by_label("For, minutes").fill("5")
    panel.get_by_role("button", name="Save").click()
    expect(panel.locator("#id_idle_stop_minutes_error")).to_contain_text("10")
    assert Instance.objects.get(pk=instance.pk).idle_stop_minutes == 45
    page.set_viewport_size({"width": 390, "height": 844})
    panel.scroll_into_view_if_needed()
    screenshot("narrow-en-error")

    user.language = "zh-hans"
    user.save(update_fields=["language"])
    page.goto(f"{base}/instances/{instance.pk}/")
    expect(panel).to_contain_text("当其 GPU 利用率持续 45 分钟低于 5% 时自动停止。")
    screenshot("narrow-zh")
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{base}/instances/launch/")
    expect(page.locator("#stop-settings-fields")).to_contain_text("GPU 空闲时自动停止")
    screenshot("launch-wide-zh")
