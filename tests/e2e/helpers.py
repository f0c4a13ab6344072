"""Helpers of the browser tests: a page-reload check, a Celery worker in a thread, and the link
in an email."""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.core import mail
from django.db import connection
from playwright.sync_api import Page

from portal.celery import app as celery_app


def mark_document(page: Page) -> None:
    """Tag the loaded document; a full page load drops the tag (see ``assert_no_reload``)."""
    page.evaluate("window.__e2eDocument = true")


def assert_no_reload(page: Page) -> None:
    assert page.evaluate("window.__e2eDocument === true"), "the page reloaded instead of htmx"


def _close_db_connection(**kwargs) -> None:
    connection.close()  # the worker thread's own connection, after each task


@contextmanager
def background_worker() -> Iterator[None]:
    """Tasks go to a Celery worker in a thread (in-memory broker) instead of running eagerly."""
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    task_postrun.connect(_close_db_connection)
    try:
        with start_worker(celery_app, perform_ping_check=False, shutdown_timeout=20):
            yield
    finally:
        task_postrun.disconnect(_close_db_connection)
        celery_app.conf.task_always_eager = eager


def emailed_link(to: str, timeout: float = 5.0) -> str:
    """The first link in the newest email to ``to`` (emails are sent after commit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in reversed(mail.outbox):
            if to in message.to:
                match = re.search(r"https?://\S+", message.body)
                assert match, f"no link in the email to {to}:\n{message.body}"
                return match.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no email to {to}; outbox: {[m.to for m in mail.outbox]}")
