"""Billing fixtures: the world of the invoicing tests, the October register, and one in-memory
localstripe per test session, emptied before each test."""

from collections.abc import Iterator

import pytest

from tests.billing.stripe_payloads import STRIPE_API_KEY, WEBHOOK_SECRET
from tests.billing.stripe_server import LocalStripe, LocalStripeUnavailable, localstripe_start
from tests.conftest import missing
from tests.factories import billing


@pytest.fixture
def world(db):
    """An organisation, a region with H200 hosts and USD prices from 1 September 2026."""
    return billing.make_world()


@pytest.fixture
def month():
    """October 2026, invoiced in November (``tests.factories.billing.october_register``)."""
    return billing.october_register()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    try:
        server = localstripe_start()
    except LocalStripeUnavailable as exc:
        missing(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stripe_settings(settings, localstripe: LocalStripe):
    """The portal configured for Stripe, pointed at an empty localstripe."""
    localstripe.reset()
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_API_BASE = localstripe.url
    settings.STRIPE_API_KEY = STRIPE_API_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


@pytest.fixture
def events_at_once(monkeypatch):
    """Tests run inside one transaction that never commits: hand stored webhook events to the
    (eager) Celery task at once instead of after commit. test_payments.py's
    ``test_events_wait_for_the_commit`` checks the real order."""
    from billing.payments import events

    monkeypatch.setattr(events, "enqueue_on_commit", lambda task, *args: task.delay(*args))
