"""With a real Redis and real Celery worker processes: a launch goes pending → running, and a
worker killed mid-provisioning leaves nothing stuck and never two machines."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal.compute.lifecycle import State
from portal.compute.models import Instance
from portal.provisioning.models import SimulatedMachine
from tests import workers
from tests.factories import World

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.fixture
def env(require_postgres, redis_db, tmp_path):
    return {
        **os.environ,
        "DATABASE_URL": workers.database_url_for_workers(),
        "CELERY_BROKER_URL": redis_db(3),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PROVISIONING_BACKEND": "simulated",
        "SIMULATED_BOOT_SECONDS": "3",
        "COMPUTE_POLL_SECONDS": "0.5",
        "COMPUTE_REDISPATCH_SECONDS": "1",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }


def start_worker(env, tmp_path, name):
    return workers.start_worker(env, tmp_path / f"{name}.log", name)


def run(env, code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


LAUNCH = """
from portal.accounts.models import Membership
from portal.accounts.types import Actor
from portal.compute import services
m = Membership.objects.select_related("user", "organization").get(pk={membership})
actor = Actor(user=m.user, organization=m.organization, role=m.role)
request = services.LaunchRequest(name="{name}", instance_type="gpu_1x_h200", region="us-east-1",
                                 image="{image}", ssh_key_ids=({key},))
print(services.instance_launch(actor=actor, request=request)[0].pk)
"""


def launch(env, world, name) -> int:
    from portal.accounts.models import Membership

    membership = Membership.objects.get(user=world.owner, organization=world.org)
    return int(
        run(
            env,
            LAUNCH.format(
                membership=membership.pk, name=name, image=world.image.name, key=world.ssh_key.pk
            ),
        )
    )


def wait_for(instance_id, states, log: Path, timeout=40.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Instance.objects.get(pk=instance_id).state
        if state in states:
            return state
        time.sleep(0.2)
    raise AssertionError(
        f"instance {instance_id} still {state} after {timeout}s; worker log:\n"
        + log.read_text()[-6000:]
    )


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_launch_goes_from_pending_to_running_through_a_real_worker(env, tmp_path):
    world = World()
    worker = start_worker(env, tmp_path, "w1")
    try:
        instance_id = launch(env, world, "real-worker")
        log = tmp_path / "w1.log"
        assert wait_for(instance_id, {State.RUNNING, State.FAILED}, log) == State.RUNNING, (
            log.read_text()
        )
        instance = Instance.objects.get(pk=instance_id)
        assert instance.ip_address
        steps = [(e.to_state, e.detail.get("stage")) for e in instance.events.order_by("id")]
        assert steps == [
            ("pending", None),
            ("provisioning", None),
            ("", "booting"),  # the host has the machine: placing is over
            ("running", None),
        ]
    finally:
        stop(worker)


def test_a_worker_killed_mid_provisioning_leaves_nothing_stuck_and_one_machine(env, tmp_path):
    env = {**env, "SIMULATED_BOOT_SECONDS": "4"}
    world = World()
    first = start_worker(env, tmp_path, "w1")
    second = None
    try:
        instance_id = launch(env, world, "killed-worker")
        wait_for(instance_id, {State.PROVISIONING}, tmp_path / "w1.log")
        first.send_signal(signal.SIGKILL)  # mid-provisioning, with its task unacknowledged
        first.wait(timeout=10)
        second = start_worker(env, tmp_path, "w2")
        time.sleep(1.5)  # let the dispatch grow older than COMPUTE_REDISPATCH_SECONDS
        report = run(env, "from portal.compute.services import reconcile; print(reconcile())")
        assert str(instance_id) in report.split("timed_out")[0]  # it was re-dispatched
        final = wait_for(instance_id, {State.RUNNING, State.FAILED}, tmp_path / "w2.log")
        assert final == State.RUNNING, (tmp_path / "w2.log").read_text()
        machine_id = Instance.objects.get(pk=instance_id).machine_id
        assert SimulatedMachine.objects.filter(machine_id=machine_id).count() == 1
        assert SimulatedMachine.objects.count() == 1
    finally:
        stop(first)
        if second is not None:
            stop(second)
