"""``make run`` on real services: PostgreSQL and Redis instead of the embedded defaults.

``scripts/run.sh`` (what ``make run`` runs after installing) is started as its own process group
with ``DATABASE_URL`` and ``CELERY_BROKER_URL`` pointing at the test servers. It must migrate a
new database, load the demo data, and serve web, worker and beat: the portal answers
``/readyz``, and an instance launched over the API is provisioned by the worker through Redis.
"""

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests import workers

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(url: str, *, key: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


@pytest.fixture
def run_database(require_postgres):
    """A new, empty database on the test PostgreSQL server, dropped afterwards."""
    s = connection.settings_dict
    name = f"portal_make_run_{os.getpid()}"
    server = f"host={s['HOST']} port={s['PORT']} user={s['USER']} dbname=postgres"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{name}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.redis
def test_make_run_serves_on_postgresql_and_redis(run_database, redis_db, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "DEBUG": "1",
        "PORT": str(port),
        "DATABASE_URL": run_database,
        "CELERY_BROKER_URL": redis_db(5),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
        "SIMULATED_BOOT_SECONDS": "1",
        "COMPUTE_POLL_SECONDS": "0.5",
    }
    log = tmp_path / "make-run.log"
    process = subprocess.Popen(
        ["bash", "scripts/run.sh"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,  # web, worker and beat are stopped together below
    )
    base = f"http://127.0.0.1:{port}"
    try:
        workers.wait_until(
            lambda: (
                _call(f"{base}/readyz") == (200, {"status": "ok", "database": "ok", "broker": "ok"})
            ),
            timeout=150,
            what="the portal was not ready",
            log=log,
        )
        assert "Demo login: demo@example.com" in log.read_text()

        made = subprocess.run(
            [".venv/bin/python", "manage.py", "create_api_key", "--org", "demo", "--role", "owner"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        status, keys = _call(f"{base}/api/v1/ssh-keys", key=key)
        assert status == 200 and keys["results"], keys
        status, regions = _call(f"{base}/api/v1/regions?page_size=100", key=key)
        assert status == 200
        # the demo sells gpu_1x_h200_sxm where its H200 hosts are; try the regions in turn
        for region in regions["results"]:
            status, instance = _call(
                f"{base}/api/v1/instances",
                key=key,
                body={
                    "name": "make-run-check",
                    "instance_type": "gpu_1x_h200_sxm",
                    "region": region["code"],
                    "ssh_key_ids": [keys["results"][0]["id"]],
                },
            )
            if status == 201:
                break
        assert status == 201, instance
        workers.wait_until(
            lambda: (
                _call(f"{base}/api/v1/instances/{instance['id']}", key=key)[1].get("status")
                == "running"
            ),
            timeout=60,
            what="the worker did not bring the instance up",
            log=log,
        )
        status, page = _call(f"{base}/api/v1/instances/{instance['id']}", key=key)
        assert page["ip"] and page["ssh_command"].startswith("ssh ")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
