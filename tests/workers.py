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
    """``celery worker`` as its own process (solo pool), writing its output to ``log``."""
    return subprocess.Popen(
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
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def wait_until(predicate, *, timeout: float, what: str, log: Path) -> None:
    """Poll ``predicate`` until it holds; else fail with ``what`` and the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s; log:\n{log.read_text()[-6000:]}")
