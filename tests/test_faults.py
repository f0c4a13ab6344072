"""Faults: the broker goes away, the provisioning backend fails.

With the broker down, pages and the API keep answering and a launch is accepted: its work waits
in the database (``dispatched_at``) until the reconciler sends it again, and a real Celery worker
then runs it. With the backend failing, the instance ends ``failed``, its GPUs go back, and it
never shows up in usage, the ledger or the invoice.
"""

import os
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from billing.invoicing import services as invoicing
from billing.ledger import services as billing_services
from billing.models import LedgerEntry
from portal.catalog.models import GpuSlotClaim
from portal.celery import app as celery_app
from portal.compute import services
from portal.compute.models import Instance, State
from portal.metering import services as metering
from portal.metering.models import UsageRecord
from tests import factories, workers
from tests.factories import World

NOTHING_LISTENS = "redis://127.0.0.1:1/0"  # a real connection attempt, refused at once


@contextmanager
def celery_broker(url: str):
    """Point the Celery app at ``url`` and send tasks for real (not eagerly) inside the block.

    The app keeps a connection pool and a producer pool built from the old URL; both are put
    aside so that the next send connects to ``url``, and restored afterwards.
    """
    conf = celery_app.conf
    keys = ("broker_url", "broker_write_url", "broker_read_url", "task_always_eager")
    saved = {key: conf.get(key) for key in keys}
    pools = (celery_app._pool, celery_app.amqp._producer_pool)
    environ = os.environ.get("CELERY_BROKER_URL")  # Celery reads it before its own settings
    os.environ["CELERY_BROKER_URL"] = url
    conf.update(broker_url=url, broker_write_url=url, broker_read_url=url, task_always_eager=False)
    celery_app._pool = celery_app.amqp._producer_pool = None
    try:
        yield
    finally:
        conf.update(saved)
        if environ is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = environ
        celery_app._pool, celery_app.amqp._producer_pool = pools


def api_body(world: World, name: str = "api-box") -> dict:
    return {
        "name": name,
        "instance_type": "gpu_1x_h200",
        "region": world.region.code,
        "ssh_key_ids": [world.ssh_key.pk],
    }


@pytest.fixture
def simulated_fast(simulated_backend):
    return simulated_backend(boot_seconds=1)


@contextmanager
def celery_worker(broker_url: str, log: Path):
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "DATABASE_URL": workers.database_url_for_workers(),
        "PROVISIONING_BACKEND": "simulated",
        "SIMULATED_BOOT_SECONDS": "1",
        "COMPUTE_POLL_SECONDS": "0.5",
    }
    worker = workers.start_worker(env, log)
    try:
        yield worker
    finally:
        worker.terminate()
        worker.wait(timeout=20)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_portal_answers_and_launches_wait_for_the_reconciler(
    require_postgres, redis_db, simulated_fast, tmp_path, client
):
    world = World()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key_secret(world.org, 'owner')}")
    client.force_login(world.owner)

    with celery_broker(NOTHING_LISTENS):
        # pages and reads answer as usual
        for path in ("/", "/instances/", "/catalog/", "/billing/"):
            assert client.get(path).status_code == 200, path
        assert api.get("/api/v1/instances").status_code == 200
        # readiness says why; liveness stays up so the process is not restarted for it
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker"].startswith("error")
        assert client.get("/healthz").status_code == 200
        # a launch is accepted at once; its work is not lost, only late
        started = time.monotonic()
        response = api.post("/api/v1/instances", api_body(world), format="json")
        elapsed = time.monotonic() - started
        assert response.status_code == 201, response.content
        assert elapsed < 5, f"a launch with the broker down took {elapsed:.1f} s"
        instance = Instance.objects.get(pk=response.json()["id"])
        assert instance.state == State.PENDING and instance.dispatched_at is not None
        assert GpuSlotClaim.objects.exists()  # its GPU is held while it waits
        # the instance page says it is pending, no error page
        assert client.get(f"/instances/{instance.pk}/").status_code == 200
        # the reconciler cannot send it either, and does not fail because of it
        Instance.objects.filter(pk=instance.pk).update(
            dispatched_at=timezone.now() - timedelta(minutes=2)
        )
        assert services.reconcile().redispatched == (instance.pk,)

    # the broker is back: the next sweep sends the work and a real worker runs it
    broker = redis_db(3)
    redis.Redis.from_url(broker).flushdb()
    Instance.objects.filter(pk=instance.pk).update(
        dispatched_at=timezone.now() - timedelta(minutes=2)
    )
    log = tmp_path / "worker.log"
    with celery_broker(broker), celery_worker(broker, log):
        assert client.get("/readyz").status_code == 200
        assert services.reconcile().redispatched == (instance.pk,)
        workers.wait_until(
            lambda: Instance.objects.get(pk=instance.pk).state == State.RUNNING,
            timeout=45,
            what="the instance was not running",
            log=log,
        )
    instance.refresh_from_db()
    assert instance.ip_address and instance.running_since


@pytest.fixture
def failing_world(settings, simulated_fast):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return World(credit_amount="100")


def _bill_everything(world: World, until) -> None:
    """Close every usage hour up to ``until``, rate and debit it, refresh the month's draft."""
    with time_machine.travel(until, tick=False):
        hour = until.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        while hour < until - timedelta(hours=1):
            metering.usage_close_hour(hour_start=hour)
            hour += timedelta(hours=1)
        billing_services.usage_debit_pending()
        invoicing.invoice_draft_refresh(world.org)


def _running(world: World, clock, name: str) -> Instance:
    """A healthy instance beside the failing one, so the billing run is seen to bill."""
    instance, _ = services.instance_launch(actor=world.actor(), request=world.request(name=name))
    services.instance_sync(instance_id=instance.pk)
    clock.shift(timedelta(seconds=2))
    services.instance_sync(instance_id=instance.pk)
    instance.refresh_from_db()
    assert instance.state == State.RUNNING
    return instance


def _assert_only_billed_for(world: World, healthy: Instance, failed: Instance, before) -> None:
    billed = set(
        UsageRecord.objects.filter(organization=world.org).values_list("subject_id", flat=True)
    )
    assert str(healthy.pk) in billed and str(failed.pk) not in billed
    debits = LedgerEntry.objects.filter(account__organization=world.org, kind="usage")
    spent = -sum(entry.amount for entry in debits)
    assert spent > 0
    # Read when the healthy instance had just started, so no usage is open yet: the balance is
    # the ledger's alone (read at the real time instead, the seconds the test took would be
    # open usage of an hour the test closed ahead of the real clock).
    with time_machine.travel(healthy.running_since, tick=False):
        assert billing_services.balance(world.org) == before - spent
    draft = invoicing.invoice_draft_refresh(world.org)
    assert draft.total > 0


@pytest.mark.parametrize("marker", ["sim-capacity", "sim-permanent"])
def test_a_failing_backend_ends_the_launch_failed_released_and_unbilled(
    db, failing_world, marker, django_capture_on_commit_callbacks
):
    world = failing_world
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.api_key_secret(world.org, 'owner')}")
    balance_before = billing_services.balance(world.org)
    launched_at = timezone.now()
    with time_machine.travel(launched_at, tick=False) as clock:
        healthy = _running(world, clock, "healthy")
        held = GpuSlotClaim.objects.count()  # the healthy instance's GPU slots
        with django_capture_on_commit_callbacks(execute=True):  # the task runs (eagerly)
            response = api.post(
                "/api/v1/instances", api_body(world, f"box-{marker}"), format="json"
            )
    assert response.status_code == 201, response.content
    instance = Instance.objects.get(pk=response.json()["id"])
    assert instance.state == State.FAILED and instance.status_message
    assert instance.allocation is None
    assert GpuSlotClaim.objects.count() == held > 0
    assert api.get(f"/api/v1/instances/{instance.pk}").json()["status"] == "failed"

    _bill_everything(world, launched_at + timedelta(hours=3))
    _assert_only_billed_for(world, healthy, instance, balance_before)


def test_a_backend_that_never_answers_times_out_failed_released_and_unbilled(
    db, failing_world, settings, django_capture_on_commit_callbacks
):
    """Transient errors without end (the host is unreachable): the task gives up after its
    retries, the reconciler fails the launch after the timeout, nothing is billed."""
    world = failing_world
    balance_before = billing_services.balance(world.org)
    launched_at = timezone.now()
    with time_machine.travel(launched_at, tick=False) as clock:
        healthy = _running(world, clock, "healthy")
        held = GpuSlotClaim.objects.count()  # the healthy instance's GPU slots
        with django_capture_on_commit_callbacks(execute=True):  # retried, eagerly, then given up
            instance, _ = services.instance_launch(
                actor=world.actor(), request=world.request(name="down-sim-transient-99")
            )
        instance.refresh_from_db()
        assert instance.state in (State.PENDING, State.PROVISIONING)
        assert GpuSlotClaim.objects.count() == 2 * held
        clock.shift(timedelta(seconds=settings.COMPUTE_LAUNCH_TIMEOUT_SECONDS + 60))
        report = services.reconcile()
    assert report.timed_out == (instance.pk,)
    instance.refresh_from_db()
    assert instance.state == State.FAILED and "Timed out" in instance.status_message
    assert GpuSlotClaim.objects.count() == held > 0

    _bill_everything(world, launched_at + timedelta(hours=3))
    _assert_only_billed_for(world, healthy, instance, balance_before)
