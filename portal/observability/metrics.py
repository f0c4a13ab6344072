"""Prometheus metrics and the ``/metrics`` endpoint.

The metrics (all prefixed ``portal_``):

- ``portal_http_requests_total{method, route, status}`` and
  ``portal_http_request_duration_seconds{method, route}``: ``route`` is the URL pattern
  (``instances/<int:pk>/``), never the raw path, so ids do not make new series;
- ``portal_celery_tasks_total{task, outcome}`` and ``portal_celery_task_duration_seconds{task}``;
- ``portal_instances{state, region}``: instances in the database, counted at scrape time;
- ``portal_instance_provisioning_seconds{outcome}``: from launch to ``running`` or ``failed``;
- ``portal_webhook_events_total{provider, outcome}``: ``received``, ``duplicate``,
  ``bad_signature``, ``processed``, ``failed``.

Gunicorn runs several processes and Celery workers are processes of their own. With
``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts, the same directory for every web
and worker process on the host, emptied before they start) each process writes its samples
there and ``/metrics`` adds them up (prometheus_client's multiprocess mode). Without it the
metrics are those of the process that answers.

``/metrics`` is not public: with ``METRICS_TOKEN`` set it wants ``Authorization: Bearer
<token>``; without, it answers only connections from the loopback address that came through
no proxy (no ``X-Forwarded-*`` or ``Forwarded`` header).
"""

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric

logger = logging.getLogger(__name__)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
STATIC_ROUTE = "<static>"

HTTP_REQUESTS = Counter(
    "portal_http_requests",
    "HTTP requests answered, by method, URL pattern and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and URL pattern.",
    ["method", "route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CELERY_TASKS = Counter(
    "portal_celery_tasks",
    "Celery task runs, by task name and outcome (success, failure, retry, ...).",
    ["task", "outcome"],
)
CELERY_TASK_DURATION = Histogram(
    "portal_celery_task_duration_seconds",
    "Time a Celery task run took, by task name.",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
PROVISIONING = Histogram(
    "portal_instance_provisioning_seconds",
    "Time from launch until an instance is running (outcome=running) or failed (outcome=failed).",
    ["outcome"],
    buckets=(1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600),
)
WEBHOOKS = Counter(
    "portal_webhook_events",
    "Payment provider webhook deliveries and their processing, by provider and outcome.",
    ["provider", "outcome"],
)

WEBHOOK_OUTCOMES = frozenset({"received", "duplicate", "bad_signature", "processed", "failed"})


# --- recording (called from the middleware, Celery signals and services) -------------------


def http_request_observed(*, method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_LATENCY.labels(method=method, route=route).observe(seconds)


def task_observed(*, task: str, outcome: str, seconds: float | None) -> None:
    CELERY_TASKS.labels(task=task, outcome=outcome.lower()).inc()
    if seconds is not None:
        CELERY_TASK_DURATION.labels(task=task).observe(seconds)


def webhook_observed(*, provider: str, outcome: str) -> None:
    if outcome not in WEBHOOK_OUTCOMES:
        raise ValueError(f"unknown webhook outcome {outcome!r}")
    WEBHOOKS.labels(provider=provider, outcome=outcome).inc()


def instance_transitioned(instance, previous: str, target: str) -> None:
    """Record how long a launch took when it ends (running or failed), once the transition is
    committed. ``instance`` has just been saved in ``target``."""
    if previous not in ("pending", "provisioning") or target not in ("running", "failed"):
        return
    seconds = max((instance.state_changed_at - instance.created_at).total_seconds(), 0.0)
    transaction.on_commit(lambda: PROVISIONING.labels(outcome=str(target)).observe(seconds))


# --- scrape ---------------------------------------------------------------------------------


# Collectors that read the database at scrape time, registered by the apps that own the data
# (compute registers the instance counts in its AppConfig.ready()), so this module imports none.
SCRAPE_COLLECTORS: list[Callable[[], Any]] = []


def scrape_collector_register(factory: Callable[[], Any]) -> None:
    """Add a collector (``factory()`` gives one with ``collect()``) to every scrape."""
    if factory not in SCRAPE_COLLECTORS:
        SCRAPE_COLLECTORS.append(factory)


class _Chain:
    """Several collectors registered as one (their names are not checked for clashes)."""

    def __init__(self, *collectors) -> None:
        self.collectors = collectors

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry(path: str | None = None) -> CollectorRegistry:
    """A registry for one scrape: every process' samples from the multiprocess directory
    (``path``, else ``PROMETHEUS_MULTIPROC_DIR``), or this process' own when there is none;
    plus what the apps' ``SCRAPE_COLLECTORS`` read from the database."""
    registry = CollectorRegistry()
    path = path or multiprocess_dir()
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
        registry.register(_Chain(*(factory() for factory in SCRAPE_COLLECTORS)))
    else:
        registry.register(_Chain(REGISTRY, *(factory() for factory in SCRAPE_COLLECTORS)))
    return registry


def _loopback_direct(request: HttpRequest) -> bool:
    if any(
        header in request.META
        for header in (
            "HTTP_X_FORWARDED_FOR",
            "HTTP_X_FORWARDED_PROTO",
            "HTTP_X_FORWARDED_HOST",
            "HTTP_X_REAL_IP",
            "HTTP_FORWARDED",
        )
    ):
        return False  # came through a proxy: the proxy's loopback address says nothing
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _refused(status: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse(
        {"error": {"code": code, "message": message, "details": {}}}, status=status
    )
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text format, for the scraper only."""
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return _refused(401, "metrics_token_required", "Send 'Authorization: Bearer <token>'.")
    elif not _loopback_direct(request):
        return _refused(
            403,
            "metrics_forbidden",
            "Metrics are served to local scrapers only; set METRICS_TOKEN to scrape from elsewhere.",
        )
    try:
        registry = scrape_registry()
    except ValueError as exc:  # PROMETHEUS_MULTIPROC_DIR names no directory
        logger.error("metrics unavailable: %s", exc)
        return _refused(503, "metrics_unavailable", "PROMETHEUS_MULTIPROC_DIR is not a directory.")
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
