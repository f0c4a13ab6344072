"""Starting a stopped instance without GPUs in a browser, in English and in Chinese, on a desktop
and a phone: the button asks first with the no-GPU price, and the page then says plainly that it
runs without GPUs and gives the SSH command as usual."""

import pytest
from django.utils import timezone, translation
from playwright.sync_api import Dialog, expect

from portal.accounts import services as account_services
from portal.catalog.demo import load_demo_catalog
from portal.compute import services as compute_services
from portal.metering.services import no_gpu_demo_prices
from tests import factories
from tests.e2e.helpers import background_worker

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
SETTLE_MS = 20_000


@pytest.fixture
def celery_worker(settings, simulated_backend):
    settings.COMPUTE_POLL_SECONDS = 0.5
    simulated_backend(boot_seconds=1, stop_seconds=1)
    with background_worker():
        yield


def zh(english: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(english)


def launched(org, user, name, region):
    actor = factories.actor(org, user)
    key = account_services.ssh_key_create(
        actor=actor, name=f"{name}-key", public_key=factories.ed25519_public_key(f"{name}@laptop")
    )
    instance, _ = compute_services.instance_launch(
        actor=actor,
        request=compute_services.LaunchRequest(
            name=name,
            instance_type="gpu_1x_h200_sxm",
            region=region,
            ssh_key_ids=(key.pk,),
        ),
    )
    return instance


def wait_for_state(instance, state: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instance.refresh_from_db()
        if instance.state == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"{instance.name} is {instance.state}, not {state}")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_start_without_gpus_from_the_instance_page(
    live_server, transactional_db, celery_worker, browser, screenshot_dir, language
):
    base = live_server.url
    load_demo_catalog()
    no_gpu_demo_prices()
    currency = "CNY" if language == "zh" else "USD"
    org = factories.organization(name=f"Copy Lab {language}", currency=currency)
    user = factories.user(f"copy-{language}@example.com", email_verified_at=timezone.now())
    factories.member(org, "owner", user)
    region = "us-east-1"  # cn-north-1 needs a verified organisation
    instance = launched(org, user, f"copier-{language}", region)
    wait_for_state(instance, "running")
    compute_services.instance_action(
        actor=factories.actor(org, user), instance_id=instance.pk, action="stop"
    )
    wait_for_state(instance, "stopped")

    t = zh if language == "zh" else (lambda text: text)
    context = browser.new_context(locale="zh-CN" if language == "zh" else "en-GB", viewport=DESKTOP)
    page = context.new_page()
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.goto(f"{base}/login/")
    page.get_by_label(t("Email")).fill(user.email)
    page.get_by_label(t("Password")).fill(factories.PASSWORD)
    page.get_by_role("button", name=t("Log in")).click()
    expect(page.get_by_role("heading", name=org.name, level=1)).to_be_visible()

    page.goto(f"{base}/instances/{instance.pk}/")
    button = page.locator("#action-start-without-gpus")
    expect(button).to_have_text(t("Start without GPUs"))
    shots = []
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(size)
        path = screenshot_dir / f"no-gpu-{language}-stopped-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
    page.set_viewport_size(DESKTOP)

    button.click()
    price = "¥0.85" if currency == "CNY" else "0.12 USD"
    assert dialogs and price in dialogs[-1], dialogs
    if language == "en":
        assert dialogs[-1].startswith(f"Start {instance.name} without GPUs? It gets 4 vCPUs")
    else:
        assert "不带 GPU 启动" in dialogs[-1]
    notice = page.locator("#no-gpu-mode")
    expect(notice).to_contain_text(t("Running without GPUs"), timeout=SETTLE_MS)
    expect(notice).to_contain_text(price)
    expect(page.locator("#ssh-command")).to_contain_text("ssh ")
    instance.refresh_from_db()
    assert instance.state == "running" and instance.gpus is False
    for size, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(size)
        path = screenshot_dir / f"no-gpu-{language}-running-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
        # nothing sticks out sideways on a phone
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= size["width"], (label, width)
    context.close()
    assert all(path.exists() for path in shots)
