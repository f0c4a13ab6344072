"""An instance's life in a browser: launch, watch it become running, stop, start, terminate.

The pages must follow the instance by themselves (htmx polling) while its state changes in the
background, so this test runs the real work path: the live server's service calls enqueue the
``compute.instance_sync`` task on commit, and an embedded Celery worker (a thread of this
process, consuming the in-memory broker) runs it, re-enqueuing itself with its countdown while
the simulated machine boots or stops. Tasks are therefore not eager here; the simulated backend
keeps its machines in the database and takes a few seconds per transition.
"""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import Dialog, Page, expect

from portal.accounts import services as account_services
from portal.catalog.demo import load_demo_catalog
from portal.compute import services as compute_services
from portal.compute.models import Instance
from tests import factories
from tests.e2e.helpers import assert_no_reload, background_worker, mark_document

pytestmark = pytest.mark.browser

BOOT_SECONDS = 3
STOP_SECONDS = 2
SETTLE_MS = 20_000  # how long a page may take to show a state the worker reaches


@pytest.fixture
def celery_worker(settings, simulated_backend):
    """A Celery worker in a thread, with tasks sent to the in-memory broker (not run eagerly)."""
    settings.COMPUTE_POLL_SECONDS = 0.5
    simulated_backend(boot_seconds=BOOT_SECONDS, stop_seconds=STOP_SECONDS)
    with background_worker():
        yield


def test_launch_watch_stop_start_terminate(
    live_server, transactional_db, celery_worker, page: Page, screenshot
):
    base = live_server.url
    load_demo_catalog()
    org = factories.organization(name="Deep Thought", currency="USD")
    user = factories.user("ford@example.com", email_verified_at=timezone.now())
    factories.member(org, "owner", user)
    account_services.ssh_key_create(
        actor=factories.actor(org, user),
        name="ford-laptop",
        public_key=factories.ed25519_public_key("ford@laptop"),
    )
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)

    # --- log in; no instances yet ------------------------------------------------------------
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("ford@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Deep Thought", level=1)).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Instances").click()
    expect(page).to_have_url(f"{base}/instances/")
    expect(page.get_by_text("You have no instances yet.")).to_be_visible()
    screenshot("instances-empty")
    page.get_by_role("main").get_by_role("link", name="Launch an instance").last.click()

    # --- the launch form: type and region update the price in place --------------------------
    expect(page).to_have_url(f"{base}/instances/launch/")
    expect(page.get_by_role("heading", name="Launch an instance")).to_be_visible()
    mark_document(page)
    summary = page.locator("#price-summary")
    page.get_by_label("Instance type").select_option("gpu_8x_h200_sxm")
    expect(summary).to_contain_text("gpu_8x_h200_sxm")
    expect(page.get_by_test_id("price-hourly")).to_have_text("30.32 USD")
    expect(page.get_by_test_id("price-monthly")).to_have_text("22,133.60 USD")
    page.get_by_label("Instance type").select_option("gpu_1x_h200_sxm")
    expect(summary).to_contain_text("gpu_1x_h200_sxm")
    region = page.get_by_label("Region")
    expect(region.locator("option")).to_have_count(4)  # the regions that sell it
    region.select_option("us-east-1")
    expect(summary).to_contain_text("in us-east-1")
    expect(page.get_by_test_id("price-hourly")).to_have_text("3.79 USD")
    expect(page.get_by_test_id("price-monthly")).to_have_text("2,766.70 USD")
    expect(summary).to_contain_text(re.compile(r"\d+ available now in us-east-1"))
    assert_no_reload(page)
    expect(page.get_by_label("Image")).not_to_have_value("")  # the default image is chosen
    expect(page.get_by_label("ford-laptop")).to_be_checked()  # the only key is preselected

    # A missing key and a bad name are shown at their fields, in place.
    page.get_by_label("ford-laptop").uncheck()
    page.get_by_label("Name", exact=True).fill("Deep Thought!")
    page.get_by_role("button", name="Launch instance").click()
    expect(page.get_by_text("Choose at least one SSH key to log in with.")).to_be_visible()
    expect(page.locator("#id_name_error")).to_be_visible()
    assert_no_reload(page)
    screenshot("launch-errors")
    expect(page.get_by_label("Region")).to_have_value("us-east-1")  # choices survived
    page.get_by_label("ford-laptop").check()
    page.get_by_label("Name", exact=True).fill("deep-thought")
    page.get_by_label("User data (optional)").fill("#cloud-config\npackages: [htop]\n")
    screenshot("launch-form")
    page.get_by_role("button", name="Launch instance").click()

    # --- the instance page follows it to running without a reload ------------------------------
    expect(page.get_by_text("Launching deep-thought.")).to_be_visible()
    instance = Instance.objects.get(name="deep-thought")
    expect(page).to_have_url(f"{base}/instances/{instance.pk}/")
    status = page.locator("#instance-status")
    mark_document(page)
    expect(status.locator(".badge.state")).to_have_text(re.compile("Pending|Provisioning"))
    expect(status).to_contain_text("This updates by itself")
    screenshot("instance-provisioning")
    expect(status.locator(".badge.state")).to_have_text("Running", timeout=SETTLE_MS)
    assert_no_reload(page)
    instance.refresh_from_db()
    ssh_command = f"ssh ubuntu@{instance.ip_address}"
    expect(page.locator("#ssh-command")).to_have_text(ssh_command)
    expect(status).to_contain_text("The machine is running")
    expect(page.locator("#instance-status[hx-trigger]")).to_have_count(0)  # polling stopped
    screenshot("instance-running")

    # --- stop (confirmed), watch it stop ------------------------------------------------------
    status.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Stopping deep-thought.")).to_be_visible()
    expect(status.locator(".badge.state")).to_have_text("Stopped", timeout=SETTLE_MS)
    assert dialogs[-1].startswith("Stop deep-thought?"), dialogs
    expect(page.locator("#ssh-command")).to_have_count(0)
    assert_no_reload(page)
    screenshot("instance-stopped")

    # --- start it, and watch the list row come back to running ----------------------------------
    status.get_by_role("button", name="Start").click()
    expect(status.locator(".badge.state")).to_have_text(re.compile("Starting|Running"))
    assert dialogs[-1].startswith("Start deep-thought?"), dialogs
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Instances").click()
    expect(page).to_have_url(f"{base}/instances/")
    mark_document(page)
    row = page.locator(f"#instance-row-{instance.pk}")
    expect(row.get_by_role("link", name="deep-thought")).to_be_visible()
    expect(row).to_contain_text("gpu_1x_h200_sxm")
    expect(row.locator(".badge.state")).to_have_text("Running", timeout=SETTLE_MS)
    expect(row).to_contain_text("ssh ubuntu@")
    expect(page.locator(f"#instance-row-{instance.pk}[hx-trigger]")).to_have_count(0)
    assert_no_reload(page)
    screenshot("instances-running")

    # --- terminate: the name must be typed ------------------------------------------------------
    row.get_by_role("link", name="deep-thought").click()
    expect(page).to_have_url(f"{base}/instances/{instance.pk}/")
    mark_document(page)
    confirm = page.get_by_label("Type deep-thought to terminate it")
    confirm.fill("deep-thougth")
    page.get_by_role("button", name="Terminate").click()
    expect(page.get_by_text("That is not the name; type deep-thought to confirm.")).to_be_visible()
    instance.refresh_from_db()
    assert instance.state == "running"
    screenshot("terminate-mismatch")
    page.get_by_label("Type deep-thought to terminate it").fill("deep-thought")
    page.get_by_role("button", name="Terminate").click()
    expect(page.get_by_text("Terminating deep-thought.")).to_be_visible()
    expect(status.locator(".badge.state")).to_have_text("Terminated", timeout=SETTLE_MS)
    expect(status).to_contain_text("The machine is gone")
    expect(page.get_by_role("button", name="Terminate")).to_have_count(0)
    expect(page.get_by_role("heading", name="Rename")).to_have_count(0)  # gone with the state
    assert_no_reload(page)
    screenshot("instance-terminated")
    instance.refresh_from_db()
    assert instance.state == "terminated" and instance.allocation is None


def test_instance_pages_on_a_phone(
    live_server, transactional_db, celery_worker, page: Page, screenshot
):
    """The launch, list and instance pages fit a narrow screen."""
    base = live_server.url
    load_demo_catalog()
    org = factories.organization(name="Pocket Org", currency="USD")
    user = factories.user("phone@example.com", email_verified_at=timezone.now())
    factories.member(org, "owner", user)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill("phone@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Pocket Org", level=1)).to_be_visible()

    def fits() -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{page.url} scrolls sideways ({width}px)"

    page.goto(f"{base}/instances/launch/?type=gpu_1x_h200_sxm")
    expect(page.get_by_label("Instance type")).to_have_value("gpu_1x_h200_sxm")
    expect(page.get_by_text("Your organisation has no SSH keys yet")).to_be_visible()
    fits()
    screenshot("launch-phone")

    key = account_services.ssh_key_create(
        actor=factories.actor(org, user), public_key=factories.ed25519_public_key("me@phone")
    )
    instance, _ = compute_services.instance_launch(
        actor=factories.actor(org, user),
        request=compute_services.LaunchRequest(
            name="pocket-llm",
            instance_type="gpu_1x_h200_sxm",
            region="us-east-1",
            ssh_key_ids=(key.pk,),
        ),
    )
    page.goto(f"{base}/instances/")
    row = page.locator(f"#instance-row-{instance.pk}")
    expect(row.locator(".badge.state")).to_have_text("Running", timeout=SETTLE_MS)
    fits()
    screenshot("instances-phone")
    row.get_by_role("link", name="pocket-llm").click()
    expect(page.locator("#ssh-command")).to_be_visible()
    fits()
    screenshot("instance-phone")


def test_volumes_are_created_and_deleted_in_place(
    live_server, transactional_db, page: Page, screenshot
):
    load_demo_catalog()
    org = factories.organization(name="Storage Org", currency="USD")
    user = factories.user("disk@example.com", email_verified_at=timezone.now())
    factories.member(org, "member", user)
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill("disk@example.com")
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Volumes").click()
    expect(page.get_by_text("No volumes yet.")).to_be_visible()
    mark_document(page)
    panel = page.locator("#volume-panel")
    panel.get_by_label("Name").fill("Training Data")
    panel.get_by_label("Region").select_option("us-east-1")
    panel.get_by_label("Size, GB").fill("2000")
    panel.get_by_role("button", name="Create volume").click()
    expect(page.get_by_text("Use 1 to 63 lowercase letters")).to_be_visible()
    expect(panel.get_by_label("Name")).to_be_focused()
    panel.get_by_label("Name").fill("training-data")
    panel.get_by_role("button", name="Create volume").click()
    expect(page.get_by_text("Volume training-data created.")).to_be_visible()
    volume_row = page.get_by_role("row").filter(has_text="training-data")
    expect(volume_row).to_contain_text("2000 GB")
    expect(volume_row).to_contain_text("Available")
    screenshot("volume-created")
    volume_row.get_by_role("button", name="Delete volume training-data").click()
    expect(page.get_by_text("Volume deleted.")).to_be_visible()
    expect(page.get_by_text("No volumes yet.")).to_be_visible()
    assert dialogs == ["Delete the volume training-data (2000 GB)? Its data is gone for good."]
    assert_no_reload(page)
