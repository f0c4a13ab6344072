"""Reads about accounts. Every customer query is scoped to one organisation."""

from django.db.models import QuerySet
from django.utils.translation import gettext as _

from portal.accounts.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    SshKey,
    User,
)
from portal.accounts.roles import Role
from portal.errors import NotFound


def user_exists(email: str) -> bool:
    return User.objects.filter(email__iexact=email).exists()


def memberships_for_user(user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name")
    )


def membership_for(user: User, organization_id: int) -> Membership | None:
    return (
        Membership.objects.filter(user=user, organization_id=organization_id)
        .select_related("organization")
        .first()
    )


def members_list(organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("user__email")
    )


def members_for_page(organization: Organization) -> list[Membership]:
    """Members with ``is_last_owner`` set: the one membership that may not leave or change role."""
    members = list(members_list(organization))
    owners = [m for m in members if m.role == Role.OWNER]
    for m in members:
        m.is_last_owner = len(owners) == 1 and m is owners[0]
    return members


def invitations_open(organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=organization, accepted_at__isnull=True, revoked_at__isnull=True
    ).select_related("invited_by")


def api_keys_list(organization: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=organization).select_related("created_by")


def ssh_keys_list(organization: Organization) -> QuerySet[SshKey]:
    return SshKey.objects.filter(organization=organization).select_related("created_by")


def ssh_key_get(organization: Organization, ssh_key_id: int) -> SshKey:
    ssh_key = ssh_keys_list(organization).filter(pk=ssh_key_id).first()
    if ssh_key is None:
        raise NotFound(_("No such SSH key in this organisation."))
    return ssh_key


def audit_events_list(organization: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organization=organization)
