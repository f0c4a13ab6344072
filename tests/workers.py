"""Real Celery worker processes for tests: started against the test database and a real broker,
and waiting for what they do."""

import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url_for_workers() -> str:
    """The database this test uses, as a URL another process can open (PostgreSQL only)."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def start_worker(env: dict, log: Path, name: str = "worker") -> subprocess.Popen:
    """``celery worker`` as its own process (solo pool), writing its output to ``log``; returns
    once it is ready. Until a worker has declared its queue on a new Redis database, a task sent
    there is routed to no queue and lost, and on a busy machine (or beside other tests running
    in parallel) a worker can take longer to start than the test takes to send its first task."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{name}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    wait_until(
        lambda: process.poll() is not None or " ready." in log.read_text(),
        timeout=90,
        what=f"the Celery worker {name} was not ready",
        log=log,
    )
    return process


def wait_until(predicate, *, timeout: float, what: str, log: Path) -> None:
    """Poll ``predicate`` until it holds; else fail with ``what`` and the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s; log:\n{log.read_text()[-6000:]}")
