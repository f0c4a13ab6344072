from django.utils.translation import gettext as _
from rest_framework.permissions import BasePermission

from portal.accounts.errors import AccountsErrorCode
from portal.accounts.middleware import client_ip
from portal.accounts.models import ApiKey
from portal.accounts.roles import Action
from portal.accounts.types import Actor
from portal.errors import PermissionDenied


def api_actor(request) -> Actor:
    """The actor of an API call: the API key, or the signed-in user in their current organisation."""
    if isinstance(request.auth, ApiKey):
        key = request.auth
        return Actor(
            user=None,
            organization=key.organization,
            role=key.role,
            api_key=key,
            ip_address=client_ip(request),
        )
    membership = getattr(request._request, "membership", None)
    return Actor(
        user=request.user if request.user.is_authenticated else None,
        organization=membership.organization if membership else None,
        role=membership.role if membership else None,
        ip_address=client_ip(request),
    )


class HasOrganizationRole(BasePermission):
    """The view declares ``actions = {"GET": Action.X, ...}``; the matrix decides."""

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        actor = api_actor(request)
        request.actor = actor
        if actor.organization is None:
            raise PermissionDenied(
                _("You are not a member of any organisation yet."),
                code=AccountsErrorCode.NO_ORGANIZATION,
            )
        if request.method.lower() not in view.http_method_names or not hasattr(
            view, request.method.lower()
        ):
            return True  # the view answers 405 Method Not Allowed
        action: Action | None = getattr(view, "actions", {}).get(request.method)
        if action is None and request.method in ("HEAD", "OPTIONS"):
            action = view.actions.get("GET")
        if action is None or not actor.can(action):
            raise PermissionDenied()
        return True
