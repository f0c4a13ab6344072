from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from portal.accounts import services
from portal.accounts.models import ApiKey, AuditEvent, Invitation, Membership, SshKey, User
from portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tests import factories

pytestmark = pytest.mark.django_db


def link_in(message) -> str:
    return next(word for word in message.body.split() if word.startswith("http"))


def token_of(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


# --- sign up and email verification -----------------------------------------------------------


def test_signup_creates_user_audit_row_and_sends_verification(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        user = services.user_signup(
            email=" New@Example.COM ", password="a-Long-pass-123", full_name="Ada"
        )
    assert user.email == "new@example.com"
    assert user.check_password("a-Long-pass-123")
    assert not user.email_verified
    assert AuditEvent.objects.filter(action="user.signup", actor_user=user).count() == 1
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["new@example.com"]

    verified = services.user_verify_email(token=token_of(link_in(mail.outbox[0])))
    assert verified.pk == user.pk
    user.refresh_from_db()
    assert user.email_verified


def test_the_console_prints_the_verification_link_whole(django_capture_on_commit_callbacks):
    """Quoted-printable would split the link with a soft break ("=" at a line's end): a person
    copying it from the console would get "Link not valid"."""
    import io

    from portal.mailers import ConsoleEmailBackend

    user = factories.user("someone-with-a-rather-long-address@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        services.user_send_verification(user=user)
    link = link_in(mail.outbox[0])
    assert len(link) > 78  # longer than a quoted-printable line
    stream = io.StringIO()
    ConsoleEmailBackend(stream=stream).send_messages(mail.outbox)
    printed = stream.getvalue()
    assert link in printed.splitlines()
    assert "quoted-printable" not in printed
    assert services.user_verify_email(token=token_of(link)).pk == user.pk

    mail.outbox[0].body = f"Bestätigen / 确认: {link}"  # UTF-8 text stays readable too
    stream = io.StringIO()
    ConsoleEmailBackend(stream=stream).send_messages(mail.outbox)
    assert f"Bestätigen / 确认: {link}" in stream.getvalue().splitlines()


def test_signup_rejects_duplicate_email_case_insensitively_and_weak_password():
    factories.user("taken@example.com")
    with pytest.raises(Conflict) as caught:
        services.user_signup(email="TAKEN@example.com", password="a-Long-pass-123")
    assert caught.value.code == "email_taken"
    with pytest.raises(InvalidInput) as caught:
        services.user_signup(email="fresh@example.com", password="123")
    assert caught.value.code == "password_invalid"
    assert not User.objects.filter(email="fresh@example.com").exists()


def test_verification_link_expires_and_rejects_tampering(django_capture_on_commit_callbacks):
    user = factories.user()
    with django_capture_on_commit_callbacks(execute=True):
        services.user_send_verification(user=user)
    token = token_of(link_in(mail.outbox[0]))
    with pytest.raises(InvalidInput) as caught:
        services.user_verify_email(token=token[:-2] + "xx")
    assert caught.value.code == "token_invalid"
    with (
        time_machine.travel(timezone.now() + timedelta(days=4)),
        pytest.raises(InvalidInput) as caught,
    ):
        services.user_verify_email(token=token)
    assert caught.value.code == "token_expired"


def test_login_is_throttled_after_repeated_failures(rf, settings):
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    factories.user("t@example.com")
    request = rf.post("/login/")
    for _ in range(3):
        with pytest.raises(InvalidInput):
            services.user_login(request=request, email="t@example.com", password="wrong")
    # Even the right password is refused while throttled.
    with pytest.raises(Exception) as caught:
        services.user_login(request=request, email="t@example.com", password=factories.PASSWORD)
    assert caught.value.code == "login_throttled"
    # Another client address is not affected.
    other = rf.post("/login/", REMOTE_ADDR="10.0.0.9")
    assert services.user_login(request=other, email="t@example.com", password=factories.PASSWORD)


# --- organisations ----------------------------------------------------------------------------


def test_organization_create_makes_creator_owner_with_unique_slug():
    user = factories.user()
    first = services.organization_create(
        user=user, name="Deep Lab", billing_email="b@x.com", country="de"
    )
    second = services.organization_create(
        user=user, name="Deep Lab", billing_email="b@x.com", country="DE"
    )
    assert (first.slug, second.slug) == ("deep-lab", "deep-lab-2")
    assert first.country == "DE"
    assert Membership.objects.get(user=user, organization=first).role == "owner"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("country", "Germany", "country_invalid"),
        ("country", "ZZ", "country_invalid"),
        ("currency", "EUR", "currency_invalid"),
        ("billing_mode", "weekly", "billing_mode_invalid"),
        ("billing_email", "not-an-email", "email_invalid"),
        ("name", "   ", "name_required"),
    ],
)
def test_organization_bad_input_is_refused_and_writes_nothing(field, value, code):
    user = factories.user()
    fields = {"name": "Lab", "billing_email": "b@x.com", "country": "US", field: value}
    with pytest.raises(InvalidInput) as caught:
        services.organization_create(user=user, **fields)
    assert caught.value.code == code
    assert not Membership.objects.filter(user=user).exists()


def test_organization_update_and_delete(org, owner):
    actor = factories.actor(org, owner)
    services.organization_update(actor=actor, name="Renamed", tax_id="DE123")
    org.refresh_from_db()
    assert (org.name, org.tax_id) == ("Renamed", "DE123")
    with pytest.raises(InvalidInput):
        services.organization_delete(actor=actor, confirm_slug="wrong")
    services.organization_delete(actor=actor, confirm_slug=org.slug)
    assert not Membership.objects.filter(user=owner).exists()
    org.refresh_from_db()
    assert org.deleted_at is not None  # closed, its history kept
    event = AuditEvent.objects.get(action="organization.delete")
    assert event.details == {"slug": org.slug}


# --- members ----------------------------------------------------------------------------------


def test_last_owner_cannot_leave_or_be_demoted(org, owner):
    actor = factories.actor(org, owner)
    membership = Membership.objects.get(user=owner)
    with pytest.raises(Conflict) as caught:
        services.membership_change_role(actor=actor, membership_id=membership.pk, role="admin")
    assert caught.value.code == "last_owner"
    with pytest.raises(Conflict):
        services.membership_remove(actor=actor, membership_id=membership.pk)
    # With a second owner, the first may step down.
    second = factories.member(org, "owner")
    services.membership_change_role(actor=actor, membership_id=membership.pk, role="admin")
    assert Membership.objects.get(user=owner).role == "admin"
    assert Membership.objects.get(user=second).role == "owner"


def test_admin_cannot_remove_an_owner_but_any_member_can_leave(org, owner):
    admin = factories.member(org, "admin")
    viewer = factories.member(org, "viewer")
    owner_membership = Membership.objects.get(user=owner)
    with pytest.raises(PermissionDenied):
        services.membership_remove(
            actor=factories.actor(org, admin), membership_id=owner_membership.pk
        )
    viewer_membership = Membership.objects.get(user=viewer)
    services.membership_remove(
        actor=factories.actor(org, viewer), membership_id=viewer_membership.pk
    )
    assert not Membership.objects.filter(user=viewer).exists()
    assert AuditEvent.objects.filter(action="membership.leave").count() == 1


# --- invitations ------------------------------------------------------------------------------


def invite(org, owner, email="new@example.com", role="member", capture=None):
    with capture(execute=True):
        invitation = services.invitation_create(
            actor=factories.actor(org, owner), email=email, role=role
        )
    return invitation, token_of(link_in(mail.outbox[-1]))


def test_invitation_accept_as_new_user_is_single_use(
    org, owner, django_capture_on_commit_callbacks
):
    invitation, token = invite(org, owner, capture=django_capture_on_commit_callbacks)
    assert mail.outbox[-1].to == ["new@example.com"]
    user = services.invitation_accept_as_new_user(
        token=token, full_name="New", password="a-Long-pass-123"
    )
    assert Membership.objects.get(user=user, organization=org).role == "member"
    assert user.email_verified
    with pytest.raises(InvalidInput) as caught:
        services.invitation_accept(token=token, user=user)
    assert caught.value.details == {"status": "accepted"}
    invitation.refresh_from_db()
    assert invitation.accepted_by == user


def test_invitation_for_existing_user_must_match_email(
    org, owner, django_capture_on_commit_callbacks
):
    invited = factories.user("invited@example.com")
    stranger = factories.user()
    _, token = invite(
        org, owner, email="Invited@Example.com", capture=django_capture_on_commit_callbacks
    )
    with pytest.raises(PermissionDenied) as caught:
        services.invitation_accept(token=token, user=stranger)
    assert caught.value.code == "invitation_wrong_user"
    membership = services.invitation_accept(token=token, user=invited)
    assert membership.organization == org


def test_invitation_expires_resend_gives_new_link_and_revoke_closes_it(
    org, owner, django_capture_on_commit_callbacks
):
    invitation, token = invite(org, owner, capture=django_capture_on_commit_callbacks)
    with time_machine.travel(timezone.now() + timedelta(days=8)):
        with pytest.raises(InvalidInput) as caught:
            services.invitation_for_token(token)
        assert caught.value.details == {"status": "expired"}
        with django_capture_on_commit_callbacks(execute=True):
            services.invitation_resend(
                actor=factories.actor(org, owner), invitation_id=invitation.pk
            )
        new_token = token_of(link_in(mail.outbox[-1]))
        assert new_token != token
        with pytest.raises(InvalidInput):
            services.invitation_for_token(token)  # the old link stopped working
        assert services.invitation_for_token(new_token).pk == invitation.pk
        services.invitation_revoke(actor=factories.actor(org, owner), invitation_id=invitation.pk)
        with pytest.raises(InvalidInput) as caught:
            services.invitation_for_token(new_token)
        assert caught.value.details == {"status": "revoked"}


def test_invitation_refuses_duplicates_members_and_roles_above_the_inviter(
    org, owner, django_capture_on_commit_callbacks
):
    invite(org, owner, capture=django_capture_on_commit_callbacks)
    with pytest.raises(Conflict) as caught:
        services.invitation_create(
            actor=factories.actor(org, owner), email="NEW@example.com", role="viewer"
        )
    assert caught.value.code == "already_invited"
    with pytest.raises(Conflict) as caught:
        services.invitation_create(
            actor=factories.actor(org, owner), email=owner.email, role="viewer"
        )
    assert caught.value.code == "already_member"
    admin = factories.member(org, "admin")
    with pytest.raises(PermissionDenied) as caught:
        services.invitation_create(
            actor=factories.actor(org, admin), email="boss@example.com", role="owner"
        )
    assert caught.value.code == "role_not_grantable"
    assert Invitation.objects.count() == 1


# --- API keys ---------------------------------------------------------------------------------


def test_api_key_is_stored_hashed_and_authenticates_until_revoked(org, owner):
    actor = factories.actor(org, owner)
    api_key, secret = services.api_key_create(actor=actor, name="ci", role="member")
    assert secret.startswith(f"gpc_{api_key.prefix}_")
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert secret not in {stored.secret_hash, stored.prefix}
    assert services.api_key_authenticate(secret).pk == api_key.pk
    assert services.api_key_authenticate(secret + "x") is None
    assert services.api_key_authenticate("gpc_nothing_here") is None
    services.api_key_revoke(actor=actor, api_key_id=api_key.pk)
    assert services.api_key_authenticate(secret) is None


def test_api_key_expiry_and_last_used(org, owner):
    actor = factories.actor(org, owner)
    api_key, secret = services.api_key_create(
        actor=actor, name="short", role="viewer", expires_at=timezone.now() + timedelta(hours=1)
    )
    assert services.api_key_authenticate(secret) is not None
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        assert services.api_key_authenticate(secret) is None
    with pytest.raises(InvalidInput) as caught:
        services.api_key_create(actor=actor, name="past", role="viewer", expires_at=timezone.now())
    assert caught.value.code == "expiry_in_past"


@pytest.mark.parametrize(
    ("creator", "allowed"),
    [
        ("owner", {"owner", "admin", "member", "billing", "viewer"}),
        ("admin", {"admin", "member", "viewer"}),  # billing can manage billing; admins cannot
        ("member", {"member", "viewer"}),
        ("billing", {"billing", "viewer"}),
    ],
)
def test_api_key_role_is_never_above_the_creator(org, creator, allowed):
    actor = factories.actor(org, factories.member(org, creator))
    for role in ("owner", "admin", "member", "billing", "viewer"):
        if role in allowed:
            services.api_key_create(actor=actor, name=f"k-{role}", role=role)
        else:
            with pytest.raises(PermissionDenied):
                services.api_key_create(actor=actor, name=f"k-{role}", role=role)
    assert set(ApiKey.objects.values_list("role", flat=True)) == allowed


# --- SSH keys and audit -----------------------------------------------------------------------


def test_ssh_key_duplicates_are_rejected_per_organization(org, owner):
    actor = factories.actor(org, owner)
    line = factories.ed25519_public_key("me@laptop")
    ssh_key = services.ssh_key_create(actor=actor, public_key=line)
    assert ssh_key.name == "me@laptop"
    with pytest.raises(Conflict) as caught:
        services.ssh_key_create(actor=actor, name="again", public_key=line)
    assert caught.value.code == "ssh_key_duplicate"
    # The same key may be added to another organisation.
    other = factories.organization()
    services.ssh_key_create(
        actor=factories.actor(other, factories.member(other, "owner")), public_key=line
    )
    assert SshKey.objects.count() == 2


def test_ssh_key_of_another_organization_is_not_found(org, owner):
    other = factories.organization()
    foreign = services.ssh_key_create(
        actor=factories.actor(other, factories.member(other, "owner")),
        public_key=factories.ed25519_public_key(),
    )
    with pytest.raises(NotFound):
        services.ssh_key_delete(actor=factories.actor(org, owner), ssh_key_id=foreign.pk)
    assert SshKey.objects.filter(pk=foreign.pk).exists()


def test_every_write_records_who_what_and_where(org, owner):
    actor = factories.actor(org, owner)
    ssh_key = services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
    services.ssh_key_delete(actor=actor, ssh_key_id=ssh_key.pk)
    events = list(AuditEvent.objects.filter(organization=org).order_by("id"))
    assert [e.action for e in events] == ["ssh_key.create", "ssh_key.delete"]
    assert all(e.actor_user == owner and e.ip_address == "127.0.0.1" for e in events)
    assert events[0].target_id == str(ssh_key.pk)


def test_ssh_keys_named_after_the_same_comment_get_numbers(org, owner):
    actor = factories.actor(org, owner)
    names = [
        services.ssh_key_create(
            actor=actor, public_key=factories.ed25519_public_key("me@laptop")
        ).name
        for _ in range(3)
    ]
    assert names == ["me@laptop", "me@laptop (2)", "me@laptop (3)"]
    with pytest.raises(Conflict) as caught:
        services.ssh_key_create(
            actor=actor, name="me@laptop", public_key=factories.ed25519_public_key()
        )
    assert caught.value.code == "ssh_key_name_taken"
