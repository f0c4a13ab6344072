"""Frozen dataclasses other apps may import."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from django.db import models
from django.utils.translation import gettext_lazy as _

from portal.accounts.roles import Action, role_allows

if TYPE_CHECKING:
    from portal.accounts.models import ApiKey, Organization, User


class BillingMode(models.TextChoices):
    """How an organisation pays: credit bought in advance, or a monthly invoice."""

    PREPAID = "prepaid", _("Prepaid credits")
    INVOICED = "invoiced", _("Invoiced monthly")


@dataclass(frozen=True)
class Actor:
    """Who is acting, in which organisation, with which role, from where.

    Built once per request (from a session or an API key) and passed to every service.
    """

    user: "User | None"
    organization: "Organization | None"
    role: str | None
    api_key: "ApiKey | None" = None
    ip_address: str | None = None
    operator: bool = False  # staff acting from admin on a customer's behalf

    def can(self, action: Action) -> bool:
        return role_allows(self.role, action)

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"API key {self.api_key.name} ({self.api_key.prefix})"
        if self.user is not None:
            return f"operator {self.user.email}" if self.operator else self.user.email
        return "system"

    @classmethod
    def for_operator(
        cls, user: "User", organization: "Organization", ip_address: str | None = None
    ) -> "Actor":
        return cls(
            user=user, organization=organization, role="owner", ip_address=ip_address, operator=True
        )

    @classmethod
    def system(cls, organization: "Organization | None" = None) -> "Actor":
        return cls(user=None, organization=organization, role="owner")


class OrganizationDeleteCheck(Protocol):
    """A hook (settings.ACCOUNTS_ORGANIZATION_DELETE_CHECKS) that says what an organisation
    still holds in another app, e.g. ``{"instances": 2, "volumes": 0}``; deletion is refused
    while any count is above zero. Apps above accounts fill it in, so accounts imports none."""

    def __call__(self, organization: "Organization") -> dict[str, int]: ...
