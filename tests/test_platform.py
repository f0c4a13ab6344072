"""The platform around the apps: a real Celery worker, deploy settings, commands. (The probes,
/healthz and /readyz, are tested with the rest of operating the portal in test_observability.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from portal.accounts.models import ApiKey, Membership, Organization, SshKey, User
from tests import workers

ROOT = Path(__file__).resolve().parent.parent


def run_manage(
    *args: str, env: dict | None = None, timeout: int = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_real_worker_consumes_tasks_from_redis(redis_db, tmp_path):
    """Start `celery worker` as its own process against Redis and round-trip a task; the
    worker logs JSON lines carrying the task and the request id of the process that sent it."""
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis_db(0),
        "CELERY_RESULT_BACKEND": redis_db(1),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    worker = workers.start_worker(env, tmp_path / "worker.log")
    try:
        code = (
            "from portal.celery import ping; import sys; "
            "from portal.observability.logging import log_context\n"
            "with log_context(request_id='req-to-worker'):\n"
            "    sys.stdout.write(ping.delay().get(timeout=30))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout == "pong", result.stderr + (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    done = [line for line in lines if line.get("task_name") == "portal.ping"]
    assert done and all(line["request_id"] == "req-to-worker" for line in done), lines


def test_check_deploy_is_clean_with_production_settings():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            "DEBUG": "0",
            "SECRET_KEY": "k" * 20 + "-production-like-secret-with-enough-entropy-0123456789",
            "ALLOWED_HOSTS": "cloud.example.com",
            "SECURE_SSL_REDIRECT": "1",
            "SESSION_COOKIE_SECURE": "1",
            "CSRF_COOKIE_SECURE": "1",
            "SECURE_HSTS_SECONDS": "31536000",
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_settings_refuse_to_start_without_a_secret_when_debug_is_off():
    result = run_manage("check", env={"DEBUG": "0", "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.django_db
def test_demo_data_is_idempotent(capsys):
    call_command("load_demo_data")
    call_command("load_demo_data")
    out = capsys.readouterr().out
    assert "demo@example.com / demo-gpu-cloud" in out
    assert User.objects.filter(email="demo@example.com").count() == 1
    org = Organization.objects.get(slug="demo")
    assert Membership.objects.get(organization=org).role == "owner"
    assert SshKey.objects.filter(organization=org).count() == 1
    assert User.objects.get(email="demo@example.com").check_password("demo-gpu-cloud")


@pytest.mark.django_db
def test_create_api_key_prints_the_key_alone_on_its_last_line(capsys, api_client):
    call_command("load_demo_data")
    capsys.readouterr()
    call_command("create_api_key", "--org", "demo", "--role", "member", "--name", "ci")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("gpc_") and " " not in secret
    assert ApiKey.objects.get(name="ci").role == "member"
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api_client.get("/api/v1/organization").json()["slug"] == "demo"


@pytest.mark.django_db
def test_create_api_key_rejects_an_unknown_organization():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No organisation with slug 'nope'"):
        call_command("create_api_key", "--org", "nope", "--role", "viewer")


@pytest.mark.django_db  # loading the task modules lets Celery's Django fixup touch the connection
def test_every_periodic_entry_is_a_crontab_with_an_expiry_and_a_registered_task():
    from celery.schedules import crontab

    from portal.celery import app
    from portal.scheduled import SCHEDULE

    app.loader.import_default_modules()
    assert set(app.conf.beat_schedule) >= set(SCHEDULE)
    for name, entry in SCHEDULE.items():
        assert isinstance(entry["schedule"], crontab), name
        assert entry["options"]["expires"] > 0, name
        assert entry["task"] in app.tasks, name
    # Every five minutes, hours are closed one minute after usage was debited.
    assert SCHEDULE["debit-usage"]["schedule"].minute == set(range(0, 60, 5))
    assert SCHEDULE["close-usage-hours"]["schedule"].minute == set(range(1, 60, 5))
