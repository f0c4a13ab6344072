"""Request id, log context, HTTP metrics and the access log.

``RequestObservabilityMiddleware`` (first in ``MIDDLEWARE``) gives each request an id: the
caller's ``X-Request-ID`` when it is a sane token (letters, digits, ``.``, ``_``, ``:``, ``-``; at
most 128 characters), a new one otherwise. The id is in every log line written while the
request runs, in the tasks it enqueues, and in the response's ``X-Request-ID``. When the
response is ready it counts the request by URL pattern and logs one ``request finished`` line
(and Django's own warning for a 4xx response, which it would write outside the context).

``RequestContextMiddleware`` (after the organisation middleware) adds the organisation and
user of the request to the log context once they are known. API keys are known only when DRF
authenticates the call; ``ApiKeyAuthentication`` adds them then.
"""

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.log import log_response

from portal.observability import logging as log_context
from portal.observability import metrics

REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: access log at DEBUG
# URL parameters that are secrets (invitation, e-mail verification, password reset and checkout
# links): whoever reads the logs must not be able to use the link.
SECRET_PATH_PARAMETERS = frozenset({"token", "uidb64"})
REDACTED = "<redacted>"

access_log = logging.getLogger("portal.request")


def request_id_for(request: HttpRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def identity(request: HttpRequest) -> dict[str, int]:
    """The organisation, user and API key of a request, as far as they are known yet."""
    fields: dict[str, int] = {}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        api_key = getattr(user, "api_key", None)
        if api_key is not None:
            fields["api_key_id"] = api_key.pk
            fields["organization_id"] = api_key.organization_id
        elif user.pk is not None:
            fields["user_id"] = user.pk
    organization = getattr(request, "organization", None)
    if organization is not None:
        fields["organization_id"] = organization.pk
    return fields


def loggable_path(request: HttpRequest) -> str:
    """The request's path with the values of secret URL parameters replaced by ``<redacted>``."""
    path = request.path
    match = getattr(request, "resolver_match", None)
    if match is not None:
        for name, value in match.kwargs.items():
            if name in SECRET_PATH_PARAMETERS and isinstance(value, str) and value:
                path = path.replace(value, REDACTED)
    return path


def route_of(request: HttpRequest) -> str:
    """The URL pattern that answered; ``<static>`` for WhiteNoise's files, ``<unmatched>`` when
    no pattern matched (a 404, a redirect to HTTPS)."""
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return match.route
    if request.path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return metrics.STATIC_ROUTE
    return metrics.UNMATCHED_ROUTE


class RequestObservabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request)
        request.request_id = request_id
        started = time.perf_counter()
        with log_context.log_context(request_id=request_id):
            response = self.get_response(request)
            seconds = time.perf_counter() - started
            path = loggable_path(request)
            if response.status_code >= 400:
                # Django logs 4xx responses ("Not Found: /x") after the last middleware has
                # returned; log them here, inside the request's context (Django then skips it).
                log_response(
                    "%s: %s",
                    response.reason_phrase,
                    path,
                    response=response,
                    request=request,
                )
            route = route_of(request)
            metrics.http_request_observed(
                method=request.method or "",
                route=route,
                status=response.status_code,
                seconds=seconds,
            )
            if settings.LOG_REQUESTS:
                log_context.bind(**identity(request))  # API keys are known only now
                access_log.log(
                    logging.DEBUG if request.path in QUIET_PATHS else logging.INFO,
                    "request finished",
                    extra={
                        "method": request.method,
                        "path": path,
                        "route": route,
                        "status": response.status_code,
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )
        response[REQUEST_ID_HEADER] = request_id
        return response


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        log_context.bind(**identity(request))
        return self.get_response(request)
