"""Rules that hold under stale roles, concurrency, proxies and hostile input."""

import threading

import pytest
from django.db import close_old_connections
from django.test import Client, RequestFactory

from portal.accounts import services
from portal.accounts.middleware import client_ip
from portal.accounts.models import ApiKey, AuditEvent, Invitation, Membership
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests import factories

pytestmark = pytest.mark.django_db


def test_keys_and_invitations_do_not_outlive_their_creators_role(org, owner):
    admin = factories.member(org, "admin")
    admin_actor = factories.actor(org, admin)
    _admin_key, admin_secret = services.api_key_create(actor=admin_actor, name="a", role="admin")
    viewer_key, _ = services.api_key_create(actor=admin_actor, name="v", role="viewer")
    invitation = services.invitation_create(actor=admin_actor, email="x@example.com", role="admin")
    membership = Membership.objects.get(user=admin)

    services.membership_change_role(
        actor=factories.actor(org, owner), membership_id=membership.pk, role="member"
    )
    assert services.api_key_authenticate(admin_secret) is None  # an admin key above a member
    assert ApiKey.objects.get(pk=viewer_key.pk).revoked_at is None  # still within member
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is not None

    services.membership_remove(actor=factories.actor(org, owner), membership_id=membership.pk)
    assert ApiKey.objects.get(pk=viewer_key.pk).revoked_at is not None
    reasons = AuditEvent.objects.filter(action="api_key.revoke").values_list(
        "details__reason", flat=True
    )
    assert list(reasons) == ["creator_role_changed", "creator_role_changed"]


def test_a_stale_role_in_the_request_is_not_trusted(org, owner):
    admin = factories.member(org, "admin")
    stale = factories.actor(org, admin)  # built while they were admin
    Membership.objects.filter(user=admin).update(role="viewer")
    with pytest.raises(PermissionDenied):
        services.invitation_create(actor=stale, email="y@example.com", role="viewer")
    with pytest.raises(PermissionDenied):
        services.api_key_create(actor=stale, name="k", role="viewer")


def test_admins_cannot_revoke_an_owner_invitation(org, owner):
    invitation = services.invitation_create(
        actor=factories.actor(org, owner), email="o@example.com", role="owner"
    )
    admin = factories.member(org, "admin")
    with pytest.raises(PermissionDenied):
        services.invitation_revoke(actor=factories.actor(org, admin), invitation_id=invitation.pk)


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(require_postgres):
    org = factories.organization()
    first, second = factories.member(org, "owner"), factories.member(org, "owner")
    memberships = {u.pk: Membership.objects.get(user=u) for u in (first, second)}
    barrier = threading.Barrier(2)
    outcomes = []

    def demote(actor_user, target_user):
        try:
            barrier.wait()
            services.membership_change_role(
                actor=factories.actor(org, actor_user, role="owner"),
                membership_id=memberships[target_user.pk].pk,
                role="admin",
            )
            outcomes.append("demoted")
        except (PermissionDenied, Conflict) as exc:
            outcomes.append(exc.code)
        finally:
            close_old_connections()

    threads = [
        threading.Thread(target=demote, args=pair) for pair in ((first, second), (second, first))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["demoted", "permission_denied"]
    assert Membership.objects.filter(organization=org, role="owner").count() == 1


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.9", "10.0.0.1"),  # no proxy trusted: the header is ignored
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # a client-supplied entry is skipped
        (2, "203.0.113.9, 198.51.100.2", "203.0.113.9"),
        (1, "not-an-ip", "10.0.0.1"),
    ],
)
def test_client_ip_behind_trusted_proxies(settings, proxies, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_overlong_email_is_a_clear_error_not_a_500():
    with pytest.raises(InvalidInput) as caught:
        services.user_signup(email="a" * 250 + "@example.com", password="a-Long-pass-123")
    assert caught.value.code == "email_invalid"


def test_out_of_range_audit_dates_are_400_not_500(org, owner, key_client):
    response = key_client("owner").get("/api/v1/audit-events?since=0001-01-01T00:00:00%2B05:00")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    client = Client()
    client.force_login(owner)
    assert client.get("/audit/?until=9999-12-31T23:59:59-05:00").status_code == 200


def test_organization_switch_with_a_huge_id_is_refused_politely(org, owner):
    client = Client()
    client.force_login(owner)
    response = client.post("/organizations/switch/", {"organization": "9" * 30}, follow=True)
    assert "You are not a member of that organisation." in response.content.decode()


def test_password_changes_are_audited(org, owner):
    client = Client()
    client.force_login(owner)
    response = client.post(
        "/account/password/",
        {
            "old_password": factories.PASSWORD,
            "new_password1": "Another-pass-77",
            "new_password2": "Another-pass-77",
        },
    )
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="user.password_change", actor_user=owner).exists()


def test_admin_revoke_action_goes_through_the_service(org, owner):
    api_key, secret = services.api_key_create(
        actor=factories.actor(org, owner), name="k", role="viewer"
    )
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    staff.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]})
    assert services.api_key_authenticate(secret) is None
    event = AuditEvent.objects.get(action="api_key.revoke")
    assert event.actor_label.startswith("operator ")


def test_invitation_form_errors_are_shown_without_htmx(org, owner):
    client = Client()
    client.force_login(owner)
    response = client.post("/invitations/", {"email": owner.email, "role": "viewer"})
    assert response.status_code == 422
    assert "already a member" in response.content.decode()


def test_deploy_check_refuses_a_console_email_backend(settings):
    from portal.accounts.checks import email_backend_delivers

    settings.DEBUG = False
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
    assert [e.id for e in email_backend_delivers(None)] == ["accounts.E001"]
    settings.MAILERS = {"default": {"BACKEND": "portal.mailers.ConsoleEmailBackend"}}
    assert [e.id for e in email_backend_delivers(None)] == ["accounts.E001"]
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend"}}
    assert email_backend_delivers(None) == []
