from django.http import HttpRequest

from portal.accounts.roles import Action
from portal.accounts.selectors import memberships_for_user

_ACTIONS_BY_NAME = {action.value.replace(".", "_"): action for action in Action}


class _Permissions:
    """``{% if perms_org.ssh_key_manage %}`` in templates asks the permission matrix."""

    def __init__(self, actor) -> None:
        self._actor = actor

    def __getattr__(self, name: str) -> bool:
        if name not in _ACTIONS_BY_NAME:
            raise AttributeError(name)
        return self._actor.can(_ACTIONS_BY_NAME[name])


def current_organization(request: HttpRequest) -> dict:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    actor = getattr(request, "actor", None)
    return {
        "current_org": getattr(request, "organization", None),
        "current_membership": getattr(request, "membership", None),
        "user_memberships": memberships_for_user(request.user),
        "perms_org": _Permissions(actor) if actor else None,
    }
