"""Log context and formatters.

Every log line carries the context of the work that wrote it: ``request_id``,
``organization_id``, ``user_id`` (``api_key_id`` for API calls) in a web request; ``task_id``,
``task_name`` and the ids a Celery task was called with (``instance_id``, ...) in a task. The
context lives in a ``ContextVar``, so it follows the request or task and nothing else;
``ContextFilter`` (on the console handler) copies it onto each record, without overriding what
a call passed itself with ``extra=``.

``settings.LOGGING`` picks ``JsonFormatter`` (one JSON object a line, the default when DEBUG is
off) or ``PlainFormatter`` (human-readable, the default with DEBUG on) with ``LOG_FORMAT``.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

_context: ContextVar[dict[str, Any]] = ContextVar("portal_log_context", default={})  # noqa: B039

# Shown by the plain formatter, in this order, when a record has them.
PLAIN_FIELDS = (
    "request_id",
    "organization_id",
    "user_id",
    "api_key_id",
    "task_name",
    "task_id",
    "instance_id",
)


def current() -> dict[str, Any]:
    """The log context of the running request or task (a copy)."""
    return dict(_context.get())


def bind(**fields: Any) -> Token:
    """Add fields to the current context (``None`` values are left out). Returns the token
    that ``unbind`` takes to restore the context as it was."""
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """``with log_context(instance_id=7): ...`` adds fields for the duration of the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Copies the log context onto each record (fields given with ``extra=`` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(_BaseJsonFormatter):
    """``{"timestamp", "level", "logger", "message", ...context and extra fields}``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", ["asctime", "levelname", "name", "message"])
        kwargs.setdefault(
            "rename_fields", {"asctime": "timestamp", "levelname": "level", "name": "logger"}
        )
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Django passes the request object with its log lines; its text is the full URL with
        # the query string. The request id, method and (redacted) path say which request it was.
        log_data.pop("request", None)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 in UTC, to the millisecond."""
        return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


class PlainFormatter(logging.Formatter):
    """``2026-01-02 10:00:00,123 INFO portal.request message [request_id=... user_id=...]``."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in PLAIN_FIELDS if hasattr(record, key)]
        if not fields:
            return text
        first, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{first} [{' '.join(fields)}]{newline}{rest}"
