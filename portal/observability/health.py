"""Probes for load balancers and orchestrators.

- ``GET /healthz`` (liveness): the process answers. It touches no database or broker, so a
  database outage does not get every web process restarted; always 200.
- ``GET /readyz`` (readiness): the database and the Celery broker are reachable. 200 with
  ``{"status": "ok", "database": "ok", "broker": "ok"}``, or 503 with ``"status": "degraded"``
  and ``"error: <ExceptionType>"`` for the part that is down, so traffic goes elsewhere.
"""

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from portal.celery import app as celery_app


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means unreachable
        return f"error: {type(exc).__name__}"
    return "ok"


def _broker() -> str:
    try:
        # a short connect timeout: a broker that drops packets must not outlast the probe
        with celery_app.connection_for_write(connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # any transport error means unreachable
        return f"error: {type(exc).__name__}"
    return "ok"


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database(), "broker": _broker()}
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "degraded", **checks}, status=200 if ready else 503
    )
