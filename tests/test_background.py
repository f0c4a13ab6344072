"""Background work is enqueued after commit, and a broker that refuses it fails nothing."""

import logging

import pytest
from django.db import transaction

from portal.background import enqueue_on_commit

pytestmark = pytest.mark.django_db


class FakeTask:
    name = "tests.fake"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[tuple, dict]] = []

    def run(self, instance_id: int, note: str = "") -> None: ...

    def delay(self, *args, **kwargs) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((args, kwargs))


def test_the_task_is_sent_once_the_transaction_commits(django_capture_on_commit_callbacks):
    task = FakeTask()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        enqueue_on_commit(task, 7, note="hi")
        assert task.sent == []  # not before the commit
    assert task.sent == [((7,), {"note": "hi"})]


def test_a_rolled_back_transaction_sends_nothing(django_capture_on_commit_callbacks):
    task = FakeTask()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(ZeroDivisionError),
        transaction.atomic(),
    ):
        enqueue_on_commit(task, 7)
        _ = 1 / 0
    assert callbacks == [] and task.sent == []


def test_a_broker_that_refuses_the_task_is_logged_and_the_caller_goes_on(
    caplog, django_capture_on_commit_callbacks
):
    task = FakeTask(ConnectionRefusedError("broker down"))
    with (
        caplog.at_level(logging.WARNING, logger="portal.background"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        enqueue_on_commit(task, 41)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info
    assert "tests.fake" in record.getMessage() and record.instance_id == 41
