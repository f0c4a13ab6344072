"""Celery and the log context and metrics.

- A task enqueued during a web request carries the request's id in the ``portal_request_id``
  message header; the worker puts it back in the log context.
- While a task runs, every log line carries ``task_id``, ``task_name`` and the arguments it was
  called with (``task_args``); arguments named ``*_id`` (``instance_id``, ``invoice_id``) are
  fields of their own.
- Each run is counted in ``portal_celery_tasks_total{task, outcome}`` and timed.
- Celery does not install its own logging: the worker logs through ``settings.LOGGING`` like
  the web processes (JSON or plain, ``LOG_LEVEL``).

Connected by ``portal.celery`` on import.
"""

import contextlib
import inspect
import os
import re
import time
from contextvars import Token
from typing import Any

from celery import signals

from portal.observability import logging as log_context
from portal.observability import metrics

REQUEST_ID_HEADER = "portal_request_id"
_MAX_ARG_LENGTH = 200
# Arguments whose value is never logged (an e-mail body holds sign-in and invitation links).
_SECRET_ARGUMENT = re.compile(r"password|secret|token|key|card|authorization|body", re.IGNORECASE)
REDACTED = "<redacted>"

# task id -> (log context token, start time) of its runs in this process, innermost last (an
# eager retry runs inside the run it retries, under the same id)
_running: dict[str, list[tuple[Token, float]]] = {}


def task_arguments(task, args, kwargs) -> dict[str, Any]:
    """The scalar arguments of a call by parameter name (ids, names, flags; no payloads).
    Secrets and message bodies (``password``, ``token``, ``api_key``, ``body``, ...) show as
    ``<redacted>``; ids (``*_id``) are shown."""
    args, kwargs = args or (), kwargs or {}
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {**{f"arg{i}": value for i, value in enumerate(args)}, **kwargs}
    return {
        name: REDACTED
        if _SECRET_ARGUMENT.search(name) and not name.endswith("_id") and value is not None
        else value
        for name, value in bound.items()
        if value is None
        or isinstance(value, bool | int | float)
        or (isinstance(value, str) and len(value) <= _MAX_ARG_LENGTH)
    }


@signals.setup_logging.connect(weak=False)
def _use_django_logging(**kwargs) -> None:
    """Having a receiver stops Celery from configuring logging; Django's LOGGING applies."""


@signals.before_task_publish.connect(weak=False)
def _carry_request_id(headers: dict | None = None, **kwargs) -> None:
    request_id = log_context.current().get("request_id")
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.task_prerun.connect(weak=False)
def _task_started(task_id=None, task=None, args=None, kwargs=None, **extra) -> None:
    if task is None or task_id is None:
        return
    arguments = task_arguments(task, args, kwargs)
    fields: dict[str, Any] = {
        "task_id": task_id,
        "task_name": task.name,
        "task_args": arguments,
        **{name: value for name, value in arguments.items() if name.endswith("_id")},
    }
    # a worker finds message headers on the request; ``apply(headers=...)`` under ``headers``
    request_id = getattr(task.request, REQUEST_ID_HEADER, None) or (
        getattr(task.request, "headers", None) or {}
    ).get(REQUEST_ID_HEADER)
    if request_id:
        fields["request_id"] = request_id  # eager tasks keep the running request's id anyway
    _running.setdefault(task_id, []).append((log_context.bind(**fields), time.perf_counter()))


@signals.task_postrun.connect(weak=False)
def _task_finished(task_id=None, task=None, state=None, **kwargs) -> None:
    runs = _running.get(task_id) or [(None, None)]
    token, started = runs.pop()
    if not runs:
        _running.pop(task_id, None)
    if task is not None:
        metrics.task_observed(
            task=task.name,
            outcome=state or "unknown",
            seconds=time.perf_counter() - started if started is not None else None,
        )
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context: nothing to restore
            log_context.unbind(token)


@signals.worker_process_shutdown.connect(weak=False)
def _process_gone(**kwargs) -> None:
    if metrics.multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
