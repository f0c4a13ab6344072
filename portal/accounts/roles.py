"""Membership roles and the permission matrix: the one place that says who may do what.

Pages, the API and services all ask :func:`role_allows`; the README prints :data:`MATRIX`
(``manage.py permission_matrix``).
"""

from enum import StrEnum

from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", pgettext_lazy("role", "Admin")
    MEMBER = "member", pgettext_lazy("role", "Member")
    BILLING = "billing", pgettext_lazy("role", "Billing")
    VIEWER = "viewer", _("Viewer")


class Action(StrEnum):
    ORG_VIEW = "org.view"
    ORG_UPDATE = "org.update"
    ORG_DELETE = "org.delete"
    ORG_VERIFY = "org.verify"  # submit the real-name or enterprise verification
    MEMBER_VIEW = "member.view"
    MEMBER_INVITE = "member.invite"
    MEMBER_REMOVE = "member.remove"
    MEMBER_CHANGE_ROLE = "member.change_role"
    API_KEY_VIEW = "api_key.view"
    API_KEY_MANAGE = "api_key.manage"
    SSH_KEY_VIEW = "ssh_key.view"
    SSH_KEY_MANAGE = "ssh_key.manage"
    INSTANCE_VIEW = "instance.view"
    INSTANCE_MANAGE = "instance.manage"
    BILLING_VIEW = "billing.view"
    BILLING_MANAGE = "billing.manage"
    AUDIT_VIEW = "audit.view"


A = Action
_READ = {A.ORG_VIEW, A.MEMBER_VIEW, A.SSH_KEY_VIEW, A.INSTANCE_VIEW}

MATRIX: dict[Role, frozenset[Action]] = {
    Role.OWNER: frozenset(Action),
    Role.ADMIN: frozenset(Action)
    - {A.ORG_DELETE, A.ORG_VERIFY, A.MEMBER_CHANGE_ROLE, A.BILLING_MANAGE},
    Role.MEMBER: frozenset(
        _READ | {A.SSH_KEY_MANAGE, A.INSTANCE_MANAGE, A.API_KEY_VIEW, A.API_KEY_MANAGE}
    ),
    Role.BILLING: frozenset(
        _READ | {A.BILLING_VIEW, A.BILLING_MANAGE, A.API_KEY_VIEW, A.API_KEY_MANAGE}
    ),
    Role.VIEWER: frozenset(_READ),
}


def role_allows(role: str | None, action: Action) -> bool:
    if role is None:
        return False
    return action in MATRIX[Role(role)]


def role_can_grant(granter: str, granted: str) -> bool:
    """A role may hand out (to an invitation or API key) only a role it fully contains."""
    return MATRIX[Role(granted)] <= MATRIX[Role(granter)]


def grantable_roles(granter: str) -> list[Role]:
    return [role for role in Role if role_can_grant(granter, role)]


# What a role's key may call, in the words of the API-key form, from the matrix above.
ABILITIES: tuple[tuple[Action, str], ...] = (
    (A.INSTANCE_VIEW, _("read instances, volumes, usage, SSH keys, members and the catalog")),
    (
        A.INSTANCE_MANAGE,
        _("launch, stop, start and terminate instances; create and delete volumes; report usage"),
    ),
    (A.SSH_KEY_MANAGE, _("add and delete SSH keys")),
    (A.BILLING_VIEW, _("read the balance, invoices, the ledger and the spend limit")),
    (A.BILLING_MANAGE, _("top up, set the spend limit and ask for monthly invoicing")),
    (A.MEMBER_INVITE, _("invite and remove members")),
    (A.API_KEY_MANAGE, _("create and revoke API keys")),
    (A.AUDIT_VIEW, _("read the audit log")),
    (A.ORG_UPDATE, _("change the organisation's settings")),
)


def role_abilities(role: str) -> tuple[list[str], list[str]]:
    """What a key or member of ``role`` may do, and what it is refused (403), as phrases."""
    allowed = MATRIX[Role(role)]
    may = [phrase for action, phrase in ABILITIES if action in allowed]
    may_not = [phrase for action, phrase in ABILITIES if action not in allowed]
    return may, may_not


def matrix_as_markdown() -> str:
    roles = list(Role)
    lines = [
        "| action | " + " | ".join(role.value for role in roles) + " |",
        "|---" * (len(roles) + 1) + "|",
    ]
    for action in Action:
        marks = ["yes" if action in MATRIX[role] else "-" for role in roles]
        lines.append(f"| `{action.value}` | " + " | ".join(marks) + " |")
    return "\n".join(lines)
