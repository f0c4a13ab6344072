"""Verification in a browser: a launch in China is refused with a link to the verification page,
the owner submits an enterprise verification with its licence, an operator approves it in
Django admin, and the same launch then succeeds."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Page, expect

from portal.accounts.models import OrganizationVerification
from tests import factories
from tests.e2e.helpers import background_worker
from tests.factories.compute import World

pytestmark = pytest.mark.browser

PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
CREDIT_CODE = "91350100M000100Y43"
AGENT_ID = "11010519491231002X"


@pytest.fixture
def celery_worker(settings, simulated_backend, tmp_path):
    settings.COMPUTE_POLL_SECONDS = 0.5
    settings.VERIFICATION_DOCUMENT_DIR = tmp_path / "private"
    simulated_backend(boot_seconds=1, stop_seconds=1)
    with background_worker():
        yield


def _launch(page: Page, base: str) -> None:
    page.goto(f"{base}/instances/launch/")
    page.get_by_label("Instance type").select_option("gpu_1x_h200")
    page.get_by_label("Region").select_option("cn-north-1")
    page.get_by_label("Name", exact=True).fill("beijing-box")
    page.get_by_role("button", name="Launch instance").click()


def test_enterprise_verification_unlocks_launches_in_china(
    live_server, transactional_db, celery_worker, page: Page, browser, screenshot, tmp_path
):
    base = live_server.url
    world = World(region_code="cn-north-1", region_country="CN")
    world.owner.email_verified_at = timezone.now()
    world.owner.save(update_fields=["email_verified_at"])
    operator = factories.user("reviewer@example.com", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="review_verification"))

    # --- the owner's launch in China is refused, with the way to verify -----------------------
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(world.owner.email)
    page.get_by_label("Password").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    _launch(page, base)
    expect(page.get_by_text("need a verified organisation")).to_be_visible()
    screenshot("launch-refused")
    page.get_by_role("link", name="Verify your organisation").click()
    expect(page).to_have_url(f"{base}/organization/verification/")

    # --- an enterprise verification; a bad credit code is refused at its field first ----------
    licence = tmp_path / "licence.pdf"
    licence.write_bytes(PDF)
    page.get_by_label("Enterprise", exact=True).check()
    page.get_by_label("Registered company name").fill("北京算力科技有限公司")
    page.get_by_label("Unified Social Credit Code").fill("91350100M000100Y44")
    page.get_by_label("Business licence").set_input_files(str(licence))
    page.get_by_label("Authorised person's name").fill("张三")
    page.get_by_label("Authorised person's resident identity number").fill(AGENT_ID)
    page.get_by_role("button", name="Submit for review").click()
    expect(page.locator("#id_credit_code_error")).to_contain_text("credit_code_invalid")
    page.get_by_label("Enterprise", exact=True).check()
    page.get_by_label("Unified Social Credit Code").fill(CREDIT_CODE)
    page.get_by_label("Business licence").set_input_files(str(licence))
    page.get_by_label("Authorised person's resident identity number").fill(AGENT_ID)
    page.get_by_role("button", name="Submit for review").click()
    state = page.locator("#verification-state")
    expect(state).to_contain_text("Submitted, pending review")
    expect(state).to_contain_text("1101**********002X")
    expect(page.locator("body")).not_to_contain_text(AGENT_ID)
    screenshot("submitted")
    verification = OrganizationVerification.objects.get(organization=world.org)

    # --- an operator opens it in admin and approves -------------------------------------------
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    admin = context.new_page()
    admin.goto(f"{base}/admin/login/")
    admin.get_by_label("Email").fill(operator.email)
    admin.get_by_label("Password").fill(factories.PASSWORD)
    admin.get_by_role("button", name="Log in").click()
    admin.goto(f"{base}/admin/accounts/organizationverification/")
    admin.get_by_role("link", name=re.compile(world.org.name)).first.click()
    expect(admin.locator("body")).to_contain_text("1101**********002X")
    expect(admin.get_by_role("link", name="Business licence")).to_be_visible()
    admin.locator("#verification-approve").click()
    expect(admin.locator(".messagelist")).to_contain_text("approved")
    context.close()
    verification.refresh_from_db()
    assert verification.status == "approved"

    # --- the owner sees it approved, and the launch goes through --------------------------------
    page.goto(f"{base}/organization/verification/")
    expect(page.locator("#verification-state")).to_contain_text("Approved")
    _launch(page, base)
    expect(page).to_have_url(re.compile(rf"{re.escape(base)}/instances/\d+/$"))
    expect(page.get_by_role("heading", name="beijing-box")).to_be_visible()
    screenshot("launched")
    assert world.org.instances.filter(name="beijing-box").exists()
