"""Membership roles and the permission matrix: the one place that says who may do what.

Pages, the API and services all ask :func:`role_allows`; the README prints :data:`MATRIX`
(``manage.py permission_matrix``).
"""

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    BILLING = "billing", "Billing"
    VIEWER = "viewer", "Viewer"


class Action(StrEnum):
    ORG_VIEW = "org.view"
    ORG_UPDATE = "org.update"
    ORG_DELETE = "org.delete"
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
    Role.ADMIN: frozenset(Action) - {A.ORG_DELETE, A.MEMBER_CHANGE_ROLE, A.BILLING_MANAGE},
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
