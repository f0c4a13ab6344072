"""Pages as a browser without JavaScript and as htmx see them."""

import re

import pytest
from django.core import mail
from django.test import Client

from portal.accounts import services
from portal.accounts.models import Membership, Organization, SshKey, User
from portal.accounts.types import Actor
from portal.errors import Conflict, InvalidInput
from tests import factories

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def owner_client(org, owner):
    client = Client()
    client.force_login(owner)
    return client


def test_signup_then_create_organization_lands_on_dashboard():
    client = Client()
    response = client.post(
        "/signup/", {"full_name": "Ada", "email": "ada@example.com", "password": "a-Long-pass-123"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/organizations/new/"
    assert client.get("/").status_code == 302  # no organisation yet: sent to create one
    response = client.post(
        "/organizations/new/",
        {
            "name": "Ada Labs",
            "billing_email": "ada@example.com",
            "country": "GB",
            "currency": "CNY",
            "billing_mode": "invoiced",  # not a customer's choice: ignored
        },
    )
    assert response.status_code == 302
    org = Organization.objects.get(name="Ada Labs")
    assert (org.country, org.currency, org.billing_mode) == ("GB", "CNY", "prepaid")
    page = client.get("/").content.decode()
    assert "Ada Labs" in page and "Organisation Ada Labs created" in page
    assert "Please confirm your email address" in client.get("/").content.decode()


def test_signup_errors_are_shown_next_to_the_field():
    factories.user("taken@example.com")
    response = Client().post(
        "/signup/", {"email": "taken@example.com", "password": "a-Long-pass-123"}
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    response = Client().post("/signup/", {"email": "new@example.com", "password": "password"})
    assert "too common" in response.content.decode()
    assert not User.objects.filter(email="new@example.com").exists()


def test_login_wrong_password_then_throttled_with_429(settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 2
    factories.user("who@example.com")
    client = Client()
    for _ in range(2):
        response = client.post("/login/", {"email": "who@example.com", "password": "nope"})
        assert "Email or password is not correct" in response.content.decode()
    response = client.post("/login/", {"email": "who@example.com", "password": factories.PASSWORD})
    assert response.status_code == 429
    assert "Too many failed log-in attempts" in response.content.decode()


def test_login_honours_a_safe_next_only():
    factories.user("who@example.com")
    data = {"email": "who@example.com", "password": factories.PASSWORD}
    response = Client().post("/login/?next=/ssh-keys/", data)
    assert response["Location"] == "/ssh-keys/"
    response = Client().post("/login/?next=https://evil.example/", data)
    assert response["Location"] == "/"


def test_password_reset_by_email(client):
    factories.user("forgot@example.com")
    client.post("/password-reset/", {"email": "forgot@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"https?://\S+", mail.outbox[0].body).group(0)
    path = re.sub(r"^https?://[^/]+", "", link)
    response = client.get(path, follow=True)
    form_url = response.redirect_chain[-1][0]
    response = client.post(
        form_url, {"new_password1": "Brand-new-pass-9", "new_password2": "Brand-new-pass-9"}
    )
    assert response.status_code == 302
    assert User.objects.get(email="forgot@example.com").check_password("Brand-new-pass-9")


def test_ssh_key_htmx_add_returns_the_panel_with_the_new_key(owner_client):
    line = factories.ed25519_public_key("laptop")
    response = owner_client.post("/ssh-keys/", {"public_key": line}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="ssh-key-panel"' in html and "<html" not in html
    assert SshKey.objects.get().fingerprint in html
    response = owner_client.post("/ssh-keys/", {"public_key": line}, **HTMX)
    assert response.status_code == 422
    assert "already added" in response.content.decode()


def test_delete_buttons_ask_for_confirmation(org, owner_client):
    services.ssh_key_create(actor=Actor.system(org), public_key=factories.ed25519_public_key())
    html = owner_client.get("/ssh-keys/").content.decode()
    assert re.search(r'ssh-keys/\d+/delete/"[^>]*hx-confirm="Delete the SSH key', html)


def test_api_key_secret_is_shown_once(owner_client):
    response = owner_client.post("/api-keys/", {"name": "ci", "role": "member"}, **HTMX)
    secret = re.search(r'id="new-secret">(gpc_[^<]+)<', response.content.decode()).group(1)
    assert secret.startswith("gpc_")
    assert secret not in owner_client.get("/api-keys/").content.decode()


def test_the_api_key_form_says_what_each_role_may_call(org, owner_client, key_client):
    html = owner_client.get("/api-keys/").content.decode()
    abilities = re.search(r'<details class="role-abilities">.*?</details>', html, re.S).group(0)
    member = re.search(r"<dt>Member</dt>\s*<dd>(.*?)</dd>", abilities, re.S).group(1)
    assert "launch, stop, start and terminate instances" in member
    assert (
        "Refused (403): " in member and "read the balance, invoices" in member.split("Refused")[1]
    )
    owner_line = re.search(r"<dt>Owner</dt>\s*<dd>(.*?)</dd>", abilities, re.S).group(1)
    assert "Refused" not in owner_line and "read the audit log" in owner_line
    # what it says is what the API does: a member key is refused the balance, not the instances
    member_key = key_client("member", organization=org)
    assert member_key.get("/api/v1/balance").status_code == 403
    assert member_key.get("/api/v1/instances").status_code == 200


def test_member_cannot_pick_a_role_above_their_own(org):
    member = factories.member(org, "member")
    client = Client()
    client.force_login(member)
    html = client.get("/api-keys/").content.decode()
    role_select = re.search(r'<select name="role".*?</select>', html, re.S).group(0)
    options = set(re.findall(r'<option value="(\w+)"', role_select))
    assert options == {"member", "viewer"}


def test_organization_switcher_only_switches_to_own_organizations(org, owner, owner_client):
    second = services.organization_create(
        user=owner, name="Second", billing_email="b@x.com", country="US"
    )
    foreign = factories.organization()
    owner_client.post("/organizations/switch/", {"organization": second.pk})
    assert "Second" in owner_client.get("/settings/").content.decode()
    owner_client.post("/organizations/switch/", {"organization": foreign.pk})
    assert foreign.name not in owner_client.get("/settings/").content.decode()


def test_invitation_link_for_an_existing_account_asks_to_log_in(
    org, owner, django_capture_on_commit_callbacks
):
    invited = factories.user("invited@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            actor=factories.actor(org, owner), email=invited.email, role="viewer"
        )
    path = re.sub(r"^https?://[^/]+", "", re.search(r"https?://\S+", mail.outbox[-1].body).group(0))
    client = Client()
    response = client.get(path, follow=True)
    assert response.redirect_chain == [("/invitations/accept/", 302)]  # the token leaves the URL
    assert "Log in to accept" in response.content.decode()
    client.force_login(invited)
    response = client.post("/invitations/accept/")
    assert response.status_code == 302
    assert Membership.objects.get(user=invited, organization=org).role == "viewer"
    assert "already been used" in Client().get(path, follow=True).content.decode()
    assert "Open the invitation link" in Client().get("/invitations/accept/").content.decode()


def test_friendly_error_pages(owner_client, client):
    response = owner_client.get("/no-such-page/")
    assert response.status_code == 404
    assert "Not found" in response.content.decode()
    response = client.get("/api/v1/no-such-endpoint")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_pages_need_login(client):
    for path in (
        "/",
        "/ssh-keys/",
        "/members/",
        "/api-keys/",
        "/audit/",
        "/settings/",
        "/account/",
    ):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), path


def test_audit_log_filters_and_paginates(org, owner_client):
    actor = Actor.system(org)
    for _ in range(55):
        services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
    html = owner_client.get("/audit/?action=ssh_key").content.decode()
    assert "Page 1 of 2" in html and "55 events" in html
    html = owner_client.get("/audit/?action=invitation", **HTMX).content.decode()
    assert "No events match" in html


@pytest.mark.parametrize("path", ["/ssh-keys/", "/members/", "/api-keys/", "/audit/"])
def test_list_pages_do_not_run_a_query_per_row(org, owner, owner_client, path):
    actor = factories.actor(org, owner)

    def add_rows(n: int) -> None:
        for _ in range(n):
            services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
            services.api_key_create(actor=actor, name="k", role="viewer")
            factories.member(org, "viewer")

    def queries() -> int:
        with factories.QueryCounter() as counted:
            assert owner_client.get(path).status_code == 200
        return counted.n

    add_rows(1)
    queries()  # the first request stores the current organisation in the session
    before = queries()
    add_rows(5)
    assert queries() == before


def test_api_key_created_without_htmx_is_shown_once_after_a_redirect(owner_client):
    from portal.accounts.models import ApiKey

    response = owner_client.post("/api-keys/", {"name": "plain", "role": "viewer"})
    assert response.status_code == 302
    html = owner_client.get("/api-keys/").content.decode()
    secret = re.search(r'id="new-secret">(gpc_[^<]+)<', html).group(1)
    assert secret not in owner_client.get("/api-keys/").content.decode()  # reload: gone
    assert ApiKey.objects.filter(name="plain").count() == 1


def test_country_must_be_a_real_iso_code(owner_client, org):
    data = {
        "name": "X",
        "billing_email": "b@example.com",
        "country": "ZZ",
        "currency": "USD",
    }
    response = owner_client.post("/settings/", data)
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    org.refresh_from_db()
    assert org.country != "ZZ"


def test_a_new_prepaid_organization_sees_its_credit_and_how_to_start(org, owner_client):
    page = owner_client.get("/").content.decode()
    assert 'data-testid="credit-balance">10,000.00 USD' in page  # the factory's starting credit
    assert 'data-testid="first-launch"' in page and 'href="/instances/launch/"' in page


def test_viewers_see_no_launch_button_and_members_no_balance(org):
    client = Client()
    client.force_login(factories.member(org, "viewer"))
    page = client.get("/").content.decode()
    assert 'data-testid="first-launch"' in page and 'href="/instances/launch/"' not in page
    assert 'data-testid="credit-balance"' not in page  # viewers do not see billing
    client.force_login(factories.member(org, "member"))
    assert 'data-testid="credit-balance"' not in client.get("/").content.decode()


def test_invoiced_organizations_show_no_credit_balance(owner):
    invoiced = factories.organization(billing_mode="invoiced", credit_amount=None)
    client = Client()
    client.force_login(factories.member(invoiced, "owner"))
    assert 'data-testid="credit-balance"' not in client.get("/").content.decode()


def test_staff_without_an_organization_land_in_their_area():
    from django.contrib.auth.models import Permission

    finance = factories.user(is_staff=True)
    finance.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    client = Client()
    client.force_login(finance)
    assert client.get("/")["Location"] == "/finance/"
    page = client.get("/finance/").content.decode()
    assert 'href="/admin/">Admin</a>' in page
    operator = factories.user(is_staff=True)
    client.force_login(operator)
    assert client.get("/")["Location"] == "/admin/"
    client.force_login(factories.user())
    assert client.get("/")["Location"] == "/organizations/new/"


def test_the_currency_is_fixed_once_money_moved_and_billing_mode_is_not_a_choice(
    owner_client, org, owner
):

    page = owner_client.get("/settings/").content.decode()
    assert 'name="billing_mode"' not in page
    # the factory's organisation has a starting credit: its ledger fixes the currency
    assert 'name="currency"' in page and "Fixed: money has moved" in page
    with pytest.raises(Conflict) as caught:
        services.organization_update(actor=factories.actor(org, owner), currency="CNY")
    assert caught.value.code == "currency_locked"
    assert caught.value.details["currency"] == "USD" and caught.value.details["ledger_entries"] >= 1
    data = {"name": "X", "billing_email": "b@example.com", "country": "DE", "currency": "CNY"}
    owner_client.post("/settings/", data)
    org.refresh_from_db()
    assert (org.name, org.currency) == ("X", "USD")  # a disabled field keeps its value
    with pytest.raises(InvalidInput):
        services.organization_update(actor=factories.actor(org, owner), billing_mode="invoiced")


def test_a_new_organisation_may_still_change_its_currency(client):

    user = factories.user()
    fresh = services.organization_create(
        user=user, name="Fresh", billing_email="f@example.com", country="CN"
    )
    actor = factories.actor(fresh, user)
    assert services.organization_update(actor=actor, currency="CNY").currency == "CNY"


def test_pages_answer_405_to_methods_they_do_not_take_and_logout_asks_on_get(owner_client):
    assert owner_client.delete("/ssh-keys/").status_code == 405
    assert owner_client.put("/settings/").status_code == 405
    page = owner_client.get("/logout/")
    assert page.status_code == 200
    assert 'action="/logout/"' in page.content.decode()
    assert owner_client.get("/").status_code == 200  # still logged in: GET logs nobody out
    assert owner_client.post("/logout/").status_code == 302
    assert "You are not logged in" in owner_client.get("/logout/").content.decode()
