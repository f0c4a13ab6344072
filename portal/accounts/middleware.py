"""Sets ``request.organization``, ``request.membership`` and ``request.actor`` for signed-in users.

The current organisation is kept in the session; a user switches it with the organisation
switcher. A stale or foreign id falls back to the user's first organisation.
"""

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import translation

from portal.accounts.selectors import memberships_for_user
from portal.accounts.types import Actor

SESSION_KEY = "organization_id"


def client_ip(request: HttpRequest) -> str | None:
    """The client's address. Behind ``TRUSTED_PROXY_COUNT`` proxies, the address the outermost
    trusted proxy saw, from ``X-Forwarded-For`` (entries a client adds itself are ignored)."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [
            p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()
        ]
        if len(forwarded) >= proxies:
            candidate = forwarded[-proxies]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
    return request.META.get("REMOTE_ADDR")


def actor_for_request(request: HttpRequest) -> Actor:
    membership = getattr(request, "membership", None)
    return Actor(
        user=request.user if request.user.is_authenticated else None,
        organization=membership.organization if membership else None,
        role=membership.role if membership else None,
        ip_address=client_ip(request),
    )


class CurrentOrganizationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.membership = None
        request.organization = None
        request.memberships = []
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            # All of the user's memberships in one query: the current one is among them, and
            # the layout's organisation switcher lists them (no second query per page).
            memberships = list(memberships_for_user(user))
            org_id = request.session.get(SESSION_KEY)
            membership = next((m for m in memberships if m.organization_id == org_id), None)
            if membership is None:
                membership = memberships[0] if memberships else None
                if membership is not None:
                    request.session[SESSION_KEY] = membership.organization_id
                elif org_id:
                    request.session.pop(SESSION_KEY, None)
            request.memberships = memberships
            request.membership = membership
            request.organization = membership.organization if membership else None
        request.actor = actor_for_request(request)
        return self.get_response(request)


class UserLanguageMiddleware:
    """Speaks the signed-in user's chosen language (``User.language``), which outranks the
    cookie and Accept-Language that ``LocaleMiddleware`` read. Users who never chose keep
    what the browser asks for; API-key clients choose with Accept-Language."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        language = user.language if user is not None and user.is_authenticated else ""
        if language and language != request.LANGUAGE_CODE:
            translation.activate(language)
            request.LANGUAGE_CODE = translation.get_language()
        return self.get_response(request)
