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
    user = getattr(request, "user", None)
    if not user or not user.is_authenticated or user.pk is None:
        # No one signed in, or an API call made with a key (a key is not a person and has no
        # memberships): the browsable API renders its page for it too.
        return {}
    actor = getattr(request, "actor", None)
    return {
        "current_org": getattr(request, "organization", None),
        "current_membership": getattr(request, "membership", None),
        # read once by the middleware, which found the current one among them
        "user_memberships": (
            request.memberships
            if hasattr(request, "memberships")
            else memberships_for_user(request.user)
        ),
        "perms_org": _Permissions(actor) if actor else None,
    }
