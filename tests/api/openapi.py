"""The portal's OpenAPI schema, loaded by Schemathesis from the WSGI application, and calls
that run inside a test's transaction."""

from functools import cache

import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections


class InTransactionWSGI:
    """Django's WSGI handler, for requests made from inside a test's transaction.

    A real server closes obsolete database connections when a request starts and finishes;
    here that connection holds the test's (uncommitted) transaction, so that step is skipped,
    as Django's test client does.
    """

    def __init__(self) -> None:
        self._handler: WSGIHandler | None = None

    def __call__(self, environ, start_response):
        if self._handler is None:
            self._handler = WSGIHandler()
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = self._handler(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)


@cache
def portal_schema():
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", InTransactionWSGI())


def components(raw: dict, schema: dict) -> dict:
    """``schema`` with its ``$ref`` (one level) resolved."""
    ref = schema.get("$ref", "")
    return raw["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def list_operations(raw: dict) -> list[str]:
    """The paths whose GET answers a page: ``{"count", "next", "previous", "results": [...]}``."""
    paths = []
    for path, item in raw["paths"].items():
        ok = item.get("get", {}).get("responses", {}).get("200", {})
        body = components(raw, ok.get("content", {}).get("application/json", {}).get("schema", {}))
        if body.get("properties", {}).get("results", {}).get("type") == "array":
            paths.append(path)
    return sorted(paths)
