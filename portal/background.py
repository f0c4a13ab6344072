"""Background work is enqueued after commit, in one way.

``enqueue_on_commit(task, *args, **kwargs)`` sends ``task.delay(*args, **kwargs)`` once the
current transaction commits (at once when there is none), so a worker never sees a row the
transaction has not written yet, and a rolled-back transaction sends nothing::

    from portal.background import enqueue_on_commit

    with transaction.atomic():
        instance.dispatched_at = timezone.now()
        instance.save(update_fields=["dispatched_at"])
        enqueue_on_commit(instance_sync, instance.pk)

A broker that cannot take the task (down, unreachable) never fails the request that committed:
the send is logged as a warning, with the task's ``*_id`` arguments as log fields, and dropped.
So the caller writes down in the database that the work is due (a ``dispatched_at``, a queued
job) before it enqueues, and a periodic sweep sends again what no worker took.
"""

import logging
from typing import Any

from django.db import transaction

from portal.observability.celery_signals import task_arguments

logger = logging.getLogger(__name__)


def enqueue_on_commit(task, *args: Any, **kwargs: Any) -> None:
    """Send ``task`` (a Celery task) with these arguments after the current transaction
    commits; a send the broker refuses is logged and dropped (see the module docstring)."""

    def send() -> None:
        try:
            task.delay(*args, **kwargs)
        except Exception:  # the broker is down: the work's sweep sends it again later
            ids = {
                name: value
                for name, value in task_arguments(task, args, kwargs).items()
                if name.endswith("_id")
            }
            logger.warning(
                "could not enqueue %s %s; its sweep will send it again",
                task.name,
                ", ".join(f"{name}={value}" for name, value in ids.items()) or args,
                exc_info=True,
                extra=ids,
            )

    transaction.on_commit(send, robust=True)
