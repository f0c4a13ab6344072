"""A new customer's first visit, as a person in a browser.

The owner signs up, creates the organisation and invites a colleague; the colleague accepts the
emailed link with a new account, adds an SSH key, creates an API key, calls the API with it and
deletes the SSH key again (after the confirmation dialog).
"""

import base64
import hashlib
import json
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.sync_api import Dialog, Page, expect

from tests.e2e.helpers import assert_no_reload, emailed_link, mark_document

pytestmark = pytest.mark.browser

OWNER_EMAIL = "ada@example.com"
MEMBER_EMAIL = "grace@example.com"
PASSWORD = "gpu-portal-e2e-Passw0rd"
ORG_NAME = "Analytical Engines"


def new_ed25519_public_key(comment: str) -> tuple[str, str]:
    """An OpenSSH public key line and its SHA256 fingerprint, as ``ssh-keygen -l`` prints it."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{line} {comment}", f"SHA256:{digest}"


def api_get(url: str, secret: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_onboarding(live_server, settings, page: Page, screenshot):
    settings.SITE_URL = live_server.url  # emailed links point at this server
    base = live_server.url

    # --- the owner signs up -----------------------------------------------------------------
    page.goto(f"{base}/signup/")
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Full name").fill("Ada Lovelace")
    page.get_by_label("Email").fill(OWNER_EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    screenshot("signup")
    page.get_by_role("button", name="Sign up").click()

    # --- ... and lands on "create an organisation" -----------------------------------------
    expect(page).to_have_url(f"{base}/organizations/new/")
    expect(page.get_by_role("heading", name="Create an organisation")).to_be_visible()
    expect(page.get_by_text(f"We sent a confirmation link to {OWNER_EMAIL}")).to_be_visible()
    page.get_by_label("Organisation name").fill(ORG_NAME)
    billing_email = page.get_by_label("Billing email")
    expect(billing_email).to_have_value(OWNER_EMAIL)  # prefilled with the user's email
    billing_email.fill("billing@example.com")
    page.get_by_label("Country").select_option("CN")
    page.get_by_label("Currency").select_option(label="Chinese yuan")
    screenshot("organisation-create")
    page.get_by_role("button", name="Create organisation").click()

    # --- the dashboard ------------------------------------------------------------------------
    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", name=ORG_NAME, level=1)).to_be_visible()
    expect(page.get_by_text(f"Organisation {ORG_NAME} created.")).to_be_visible()
    expect(page.get_by_text("Your role: Owner")).to_contain_text("currency CNY")
    screenshot("dashboard-owner")

    # --- invite a colleague as member (htmx: no page load) ---------------------------------
    main_nav = page.get_by_role("navigation", name="Main")
    main_nav.get_by_role("link", name="Members").click()
    expect(page).to_have_url(f"{base}/members/")
    expect(page.get_by_role("heading", name="Members", level=1)).to_be_visible()
    invitations = page.locator("#invitations")
    expect(invitations.get_by_text("No pending invitations.")).to_be_visible()
    mark_document(page)
    invitations.get_by_label("Email address").fill(MEMBER_EMAIL)
    invitations.get_by_label("Role").select_option("member")
    invitations.get_by_role("button", name="Send invitation").click()
    pending = page.locator("#invitations").get_by_role("row").filter(has_text=MEMBER_EMAIL)
    expect(pending).to_be_visible()
    expect(pending.get_by_role("cell", name="Member", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Invitation sent to {MEMBER_EMAIL}.")).to_be_visible()
    assert_no_reload(page)
    expect(page).to_have_url(f"{base}/members/")
    screenshot("members-invited")

    invitation_link = emailed_link(MEMBER_EMAIL)
    assert invitation_link.startswith(f"{base}/invitations/accept/"), invitation_link

    # --- log out ------------------------------------------------------------------------------
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base}/login/")
    expect(page.get_by_text("You are logged out.")).to_be_visible()

    # --- the colleague opens the link, creates an account and joins -------------------------
    page.goto(invitation_link)
    expect(page.get_by_role("heading", name=f"Join {ORG_NAME}")).to_be_visible()
    expect(page.get_by_text("Ada Lovelace invited")).to_contain_text(MEMBER_EMAIL)
    page.get_by_label("Full name").fill("Grace Hopper")
    page.get_by_label("Choose a password").fill(PASSWORD)
    screenshot("invitation-accept")
    page.get_by_role("button", name="Create account and join").click()

    expect(page).to_have_url(f"{base}/")
    expect(page.get_by_role("heading", name=ORG_NAME, level=1)).to_be_visible()
    expect(page.get_by_text(f"You joined {ORG_NAME} as member.")).to_be_visible()
    expect(page.get_by_text("Your role: Member")).to_be_visible()
    expect(page.get_by_role("link", name="Grace Hopper")).to_be_visible()
    screenshot("dashboard-member")

    # --- add an SSH key ---------------------------------------------------------------------
    public_key, fingerprint = new_ed25519_public_key("grace@laptop")
    main_nav.get_by_role("link", name="SSH keys").click()
    expect(page).to_have_url(f"{base}/ssh-keys/")
    expect(page.get_by_text("No SSH keys yet.")).to_be_visible()
    # A bad key is refused next to the field, in place, and focus goes to the field.
    page.get_by_label("Public key").fill("ssh-ed25519 not-a-key")
    page.get_by_role("button", name="Add key").click()
    expect(page.get_by_text("The key body is not valid base64.")).to_be_visible()
    expect(page.get_by_label("Public key")).to_be_focused()
    expect(page.get_by_role("banner")).to_be_visible()  # the page was not replaced
    screenshot("ssh-key-invalid")
    page.get_by_label("Name").fill("Grace's laptop")
    page.get_by_label("Public key").fill(public_key)
    page.get_by_role("button", name="Add key").click()
    key_row = page.get_by_role("row").filter(has_text="Grace's laptop")
    expect(key_row).to_be_visible()
    expect(key_row.get_by_role("cell", name=fingerprint)).to_be_visible()
    expect(page.get_by_text("SSH key Grace's laptop added.")).to_be_visible()
    expect(page.get_by_label("Public key")).to_have_value("")  # the form is ready for the next
    screenshot("ssh-key-added")

    # --- create an API key and call the API with it -----------------------------------------
    main_nav.get_by_role("link", name="API keys").click()
    expect(page).to_have_url(f"{base}/api-keys/")
    page.get_by_label("Name").fill("e2e-script")
    role = page.get_by_label("Role")
    expect(role).to_have_value("member")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_role("status").filter(has_text="it is shown only once")
    expect(secret_box).to_contain_text("e2e-script")
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("gpc_"), secret
    expect(page.get_by_role("row").filter(has_text="e2e-script")).to_contain_text("active")
    screenshot("api-key-created")

    status, body = api_get(f"{base}/api/v1/ssh-keys", secret)
    assert status == 200, body
    assert [(k["name"], k["fingerprint"]) for k in body["results"]] == [
        ("Grace's laptop", fingerprint)
    ]
    assert body["results"][0]["created_by"] == MEMBER_EMAIL

    # --- delete the SSH key, after confirming -------------------------------------------------
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    main_nav.get_by_role("link", name="SSH keys").click()
    expect(page).to_have_url(f"{base}/ssh-keys/")
    key_row = page.get_by_role("row").filter(has_text="Grace's laptop")
    key_row.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("SSH key deleted.")).to_be_visible()
    expect(page.get_by_text(fingerprint)).to_have_count(0)
    expect(page.get_by_text("No SSH keys yet.")).to_be_visible()
    assert len(dialogs) == 1, dialogs
    assert dialogs[0].startswith("Delete the SSH key Grace's laptop?"), dialogs
    screenshot("ssh-key-deleted")

    status, body = api_get(f"{base}/api/v1/ssh-keys", secret)
    assert (status, body["count"]) == (200, 0), body
