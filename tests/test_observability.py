"""Operating the portal: request ids and structured logs, Prometheus metrics, probes."""

import io
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.db.models import Count
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from billing.payments.fake import FakeProvider
from portal.celery import app as celery_app
from portal.compute import services as compute
from portal.compute.lifecycle import State
from portal.compute.metrics import InstanceCollector
from portal.compute.models import Instance
from portal.observability import celery_signals, metrics
from portal.observability.logging import ContextFilter, JsonFormatter, PlainFormatter, log_context
from portal.observability.middleware import REDACTED
from tests import factories
from tests.factories import World

ROOT = Path(__file__).resolve().parent.parent
task_log = logging.getLogger("tests.observability")


@celery_app.task(name="tests.observability.log_for_instance")
def log_for_instance(instance_id: int, note: str = "") -> str:
    task_log.info("working on it")
    return note


@pytest.fixture
def json_lines():
    """The JSON lines the portal's console handler would write, as dicts."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def scrape(client: Client | None = None, **extra) -> str:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- request ids and logs ---------------------------------------------------------------------


def test_every_response_carries_a_request_id_and_a_sane_one_is_kept(client):
    made = client.get("/healthz")["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert client.get("/healthz")["X-Request-ID"] != made
    kept = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a:42.b_c"})
    assert kept["X-Request-ID"] == "lb-7f3a:42.b_c"
    for insane in ("two words", "x" * 129, "<script>", "-leading-dash", "id\u00e9"):
        replaced = client.get("/healthz", headers={"X-Request-ID": insane})["X-Request-ID"]
        assert replaced != insane and len(replaced) == 32


@pytest.mark.django_db
def test_log_lines_of_a_request_carry_its_id_organisation_and_user(client, json_lines):
    org = factories.organization()
    user = factories.member(org, "owner")
    client.force_login(user)
    response = client.get("/no-such-page/", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 404
    lines = json_lines()
    # written while the view ran (Django's "Not Found") and when the response was ready
    not_found = next(line for line in lines if line["logger"] == "django.request")
    finished = next(line for line in lines if line["message"] == "request finished")
    for line in (not_found, finished):
        assert line["request_id"] == "req-123"
        assert line["organization_id"] == org.pk
        assert line["user_id"] == user.pk
        assert line["level"] and line["timestamp"]
    assert finished["status"] == 404 and finished["route"] == metrics.UNMATCHED_ROUTE
    assert finished["method"] == "GET" and finished["duration_ms"] >= 0


@pytest.mark.django_db
def test_secret_link_tokens_and_query_strings_stay_out_of_the_logs(client, json_lines):
    """Invitation, e-mail verification and password-reset links are secrets: whoever reads the
    logs must not be able to open them."""
    secret = "s3cr3t-link-token-value"
    client.get(f"/verify-email/{secret}/?next=/billing/&code=query-secret")  # a 400 page
    client.get(f"/invitations/accept/{secret}/")
    client.get(f"/password-reset/MQ/{secret}/")
    lines = json_lines()
    finished = [line for line in lines if line["message"] == "request finished"]
    assert {line["route"] for line in finished} >= {
        "verify-email/<str:token>/",
        "invitations/accept/<str:token>/",
        "password-reset/<uidb64>/<token>/",
    }
    assert f"/verify-email/{REDACTED}/" in {line["path"] for line in finished}
    assert any(line["logger"] == "django.request" for line in lines)  # the 400 was logged
    text = json.dumps(lines)
    assert secret not in text and "query-secret" not in text


@pytest.mark.django_db
def test_api_calls_log_the_key_and_its_organisation(org, key_client, json_lines):
    response = key_client("viewer").get("/api/v1/organization")
    assert response.status_code == 200
    finished = next(line for line in json_lines() if line["message"] == "request finished")
    assert finished["organization_id"] == org.pk and finished["api_key_id"]
    assert finished["route"] == "api/v1/organization" and finished["request_id"]


def test_a_task_logs_its_name_id_arguments_and_the_request_that_enqueued_it(json_lines):
    with log_context(request_id="req-task-1"):
        result = log_for_instance.delay(41, note="hi")  # eager in tests
    assert result.get() == "hi"
    line = next(line for line in json_lines() if line["message"] == "working on it")
    assert line["task_name"] == "tests.observability.log_for_instance"
    assert line["task_id"] == result.id
    assert line["instance_id"] == 41
    assert line["task_args"] == {"instance_id": 41, "note": "hi"}
    assert line["request_id"] == "req-task-1"
    # once the task is done its fields leave the context
    task_log.info("after")
    after = json_lines()[-1]
    assert after["message"] == "after" and "task_id" not in after


@celery_app.task(name="tests.observability.send_secret")
def send_secret(to: str, body: str, password: str, api_key_id: int, card_token: str) -> None:
    task_log.info("sending")


def test_a_task_logs_no_secret_or_message_body_among_its_arguments(json_lines):
    send_secret.delay(
        "a@example.com", "Open https://x/invitations/accept/t0k3n/", "pw-123", 9, "tok_9"
    )
    line = next(line for line in json_lines() if line["message"] == "sending")
    assert line["task_args"] == {
        "to": "a@example.com",
        "body": "<redacted>",
        "password": "<redacted>",
        "api_key_id": 9,
        "card_token": "<redacted>",
    }
    assert "t0k3n" not in json.dumps(line) and "pw-123" not in json.dumps(line)


def test_a_worker_takes_the_request_id_from_the_message_headers(json_lines):
    log_for_instance.apply((7,), headers={celery_signals.REQUEST_ID_HEADER: "req-from-web"})
    line = next(line for line in json_lines() if line["message"] == "working on it")
    assert line["request_id"] == "req-from-web" and line["instance_id"] == 7


def test_publishing_a_task_puts_the_request_id_in_its_headers(settings):
    from celery import signals

    published = []

    def seen(headers=None, **kwargs):
        published.append(dict(headers or {}))

    signals.after_task_publish.connect(seen, weak=False)
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        with log_context(request_id="req-publish"):
            log_for_instance.apply_async((1,))
        log_for_instance.apply_async((2,))
    finally:
        celery_app.conf.task_always_eager = eager
        signals.after_task_publish.disconnect(seen)
    assert published[0][celery_signals.REQUEST_ID_HEADER] == "req-publish"
    assert celery_signals.REQUEST_ID_HEADER not in published[1]


def test_the_plain_format_is_one_readable_line_with_the_context():
    record = logging.LogRecord("portal.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    with log_context(request_id="r1", organization_id=5):
        ContextFilter().filter(record)
    text = PlainFormatter().format(record)
    assert text.endswith("WARNING portal.x hello you [request_id=r1 organization_id=5]")


# --- /metrics ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_count_requests_by_route_pattern_not_path(client):
    before = value("portal_http_requests_total", method="GET", route="healthz", status="200")
    client.get("/healthz")
    client.get("/healthz")
    text = scrape(client)
    counted = sample(
        text, "portal_http_requests_total", method="GET", route="healthz", status="200"
    )
    assert counted == before + 2
    assert sample(text, "portal_http_request_duration_seconds_count", route="healthz") >= 2
    assert 'route="/healthz"' not in text


@pytest.mark.django_db
def test_a_route_with_an_id_is_counted_under_its_pattern(owner, org):
    client = Client()
    client.force_login(owner)
    client.get("/instances/999999/")
    text = scrape()
    routes = {
        found.labels["route"]
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == "portal_http_requests_total"
    }
    assert not any("999999" in route for route in routes)
    assert any("<int:" in route for route in routes)


@pytest.mark.django_db
def test_instance_gauges_match_the_database(memory_backend, django_assert_num_queries):
    world = World()
    other = World(region_code="eu-west-1")
    running, _ = compute.instance_launch(actor=world.actor(), request=world.request("a"))
    compute.instance_launch(actor=world.actor(), request=world.request("b"))
    compute.instance_launch(actor=other.actor(), request=other.request("c"))
    compute.instance_sync(instance_id=running.pk)
    expected = {
        (row["state"], row["region__code"]): row["n"]
        for row in Instance.objects.values("state", "region__code").annotate(n=Count("id"))
    }
    assert expected[("running", "us-east-1")] == 1
    text = scrape()
    for region in ("us-east-1", "eu-west-1"):
        for state in State.values:
            got = sample(text, "portal_instances", state=state, region=region)
            assert got == expected.get((state, region), 0), (state, region)
    with django_assert_num_queries(1):
        list(InstanceCollector().collect())


@pytest.fixture
def slow_simulated_backend(simulated_backend):
    return simulated_backend(boot_seconds=60, stop_seconds=20)


@pytest.mark.django_db
def test_provisioning_time_is_observed_when_an_instance_runs_or_fails(
    slow_simulated_backend, django_capture_on_commit_callbacks
):
    world = World()
    count = "portal_instance_provisioning_seconds_count"
    total = "portal_instance_provisioning_seconds_sum"
    ran, ran_sum = value(count, outcome="running"), value(total, outcome="running")
    failed = value(count, outcome="failed")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        instance, _ = compute.instance_launch(actor=world.actor(), request=world.request())
        assert compute.instance_sync(instance_id=instance.pk) is True  # booting
        clock.shift(timedelta(seconds=61))
        with django_capture_on_commit_callbacks(execute=True):
            assert compute.instance_sync(instance_id=instance.pk) is False
        broken, _ = compute.instance_launch(
            actor=world.actor(), request=world.request("sim-permanent")
        )
        clock.shift(timedelta(seconds=3))
        with django_capture_on_commit_callbacks(execute=True):
            compute.instance_sync(instance_id=broken.pk)
    instance.refresh_from_db()
    broken.refresh_from_db()
    assert instance.state == State.RUNNING and broken.state == State.FAILED
    text = scrape()
    assert sample(text, count, outcome="running") == ran + 1
    assert sample(text, total, outcome="running") == pytest.approx(ran_sum + 61, abs=0.5)
    assert sample(text, count, outcome="failed") == failed + 1
    # stopping and starting again is not a launch
    compute.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    assert value(count, outcome="running") == ran + 1


@pytest.mark.django_db
def test_webhook_outcomes_are_counted(monkeypatch):
    from billing.payments import events

    # the task runs at once
    monkeypatch.setattr(events, "enqueue_on_commit", lambda task, *args: task.delay(*args))
    provider = FakeProvider()
    body = json.dumps(provider.event("customer.created", {"id": "cus_1"})).encode()
    headers = provider.sign(body)
    outcomes = ("received", "processed", "duplicate", "bad_signature", "failed")
    before = {o: value("portal_webhook_events_total", provider="fake", outcome=o) for o in outcomes}
    client = Client()

    def post(data: bytes, **sent) -> int:
        return client.post(
            "/webhooks/fake/", data, content_type="application/json", headers=sent
        ).status_code

    assert post(body, **headers) == 200
    assert post(body, **headers) == 200  # the provider delivered it again
    assert post(body.replace(b"cus_1", b"cus_2"), **headers) == 400
    text = scrape()
    after = {
        o: sample(text, "portal_webhook_events_total", provider="fake", outcome=o) or 0.0
        for o in outcomes
    }
    assert {o: after[o] - before[o] for o in outcomes} == {
        "received": 1,
        "processed": 1,
        "duplicate": 1,
        "bad_signature": 1,
        "failed": 0,
    }


@pytest.mark.django_db
def test_celery_tasks_are_counted_by_name_and_outcome():
    name = "tests.observability.log_for_instance"
    before = value("portal_celery_tasks_total", task=name, outcome="success")
    log_for_instance.delay(3)
    text = scrape()
    assert sample(text, "portal_celery_tasks_total", task=name, outcome="success") == before + 1
    assert sample(text, "portal_celery_task_duration_seconds_count", task=name) >= 1


@pytest.mark.django_db
def test_metrics_are_refused_to_other_callers_without_the_token(settings):
    settings.METRICS_TOKEN = ""
    client = Client()
    far = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert far.status_code == 403 and far.json()["error"]["code"] == "metrics_forbidden"
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403  # a proxy on this host: its loopback address proves nothing
    assert client.get("/metrics").status_code == 200  # loopback, direct

    settings.METRICS_TOKEN = "scrape-secret-123"
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 401
    assert client.get("/metrics").status_code == 401  # the token is wanted from everyone then
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    text = scrape(
        client, REMOTE_ADDR="203.0.113.9", headers={"Authorization": "Bearer scrape-secret-123"}
    )
    assert "portal_http_requests_total" in text


@pytest.mark.django_db
def test_metrics_and_probes_are_exempt_from_the_https_redirect(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/login/").status_code == 301


@pytest.mark.django_db
def test_multiprocess_mode_adds_up_the_samples_of_every_process(tmp_path, monkeypatch, client):
    """Two processes (a gunicorn worker, a Celery worker) write to PROMETHEUS_MULTIPROC_DIR;
    /metrics reads them all."""
    code = (
        "from portal.observability import metrics; "
        "metrics.http_request_observed(method='GET', route='mp-test', status=200, seconds=0.2); "
        "metrics.task_observed(task='mp.task', outcome='SUCCESS', seconds=1.5)"
    )
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("*.db"))
    text = generate_latest(metrics.scrape_registry(path=str(tmp_path))).decode()
    assert sample(text, "portal_http_requests_total", route="mp-test", status="200") == 2
    assert sample(text, "portal_celery_tasks_total", task="mp.task", outcome="success") == 2
    assert sample(text, "portal_celery_task_duration_seconds_sum", task="mp.task") == 3.0

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    served = scrape(client)
    assert sample(served, "portal_http_requests_total", route="mp-test", status="200") == 2


# --- probes -----------------------------------------------------------------------------------


def test_healthz_answers_without_the_database_or_the_broker(client, monkeypatch):
    """No django_db mark: any query would raise."""
    from portal.observability import health

    monkeypatch.setattr(health, "_broker", lambda: pytest.fail("liveness must not ask the broker"))
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_200_when_database_and_broker_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_with_details_when_the_broker_is_unreachable(client, monkeypatch):
    from kombu import Connection

    from portal.observability import health

    # A real connection attempt to a port where nothing listens.
    monkeypatch.setattr(
        health.celery_app, "connection_for_write", lambda: Connection("redis://127.0.0.1:1/0")
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["database"] == "ok"
    assert body["broker"].startswith("error")
    assert client.get("/healthz").status_code == 200  # alive all the same


@pytest.mark.django_db
def test_metrics_say_so_when_the_multiprocess_directory_is_missing(client, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "gone"))
    response = client.get("/metrics")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "metrics_unavailable"
