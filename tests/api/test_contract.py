"""The API's shared behaviour: authentication, error shape, pagination, schema, throttling."""

import pytest
import yaml

from portal.accounts import services
from portal.accounts.types import Actor
from tests import factories

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_missing_bad_and_revoked_keys_answer_401_in_the_error_shape(api_client, org):
    assert_error(api_client.get("/api/v1/organization"), 401, "not_authenticated")
    api_client.credentials(HTTP_AUTHORIZATION="Bearer gpc_0000_nope")
    assert_error(api_client.get("/api/v1/organization"), 401, "authentication_failed")
    api_key, secret = services.api_key_create(actor=Actor.system(org), name="k", role="viewer")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api_client.get("/api/v1/organization").json()["slug"] == org.slug
    services.api_key_revoke(actor=Actor.system(org), api_key_id=api_key.pk)
    response = api_client.get("/api/v1/organization")
    assert_error(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_session_user_without_an_organization_gets_a_clear_403(api_client):
    api_client.force_login(factories.user())
    assert_error(api_client.get("/api/v1/organization"), 403, "no_organization")


def test_ssh_key_errors_have_stable_codes_and_write_nothing(key_client):
    client = key_client("member")
    assert_error(
        client.post("/api/v1/ssh-keys", {"public_key": "garbage"}, format="json"),
        400,
        "ssh_key_invalid",
    )
    assert_error(client.post("/api/v1/ssh-keys", {}, format="json"), 400, "invalid")
    line = factories.ed25519_public_key()
    assert client.post("/api/v1/ssh-keys", {"public_key": line}, format="json").status_code == 201
    response = client.post("/api/v1/ssh-keys", {"name": "dup", "public_key": line}, format="json")
    assert_error(response, 409, "ssh_key_duplicate")
    assert client.get("/api/v1/ssh-keys").json()["count"] == 1
    assert_error(client.get("/api/v1/ssh-keys/999999"), 404, "not_found")
    assert_error(client.put("/api/v1/ssh-keys", {}, format="json"), 405, "method_not_allowed")


def test_malformed_json_is_a_parse_error(key_client):
    response = key_client("member").post(
        "/api/v1/ssh-keys", "{not json", content_type="application/json"
    )
    assert_error(response, 400, "parse_error")


def test_lists_paginate_and_query_count_does_not_grow_with_page_size(org, key_client):
    client = key_client("owner")
    actor = Actor.system(org)
    for _ in range(30):
        services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
    page = client.get("/api/v1/ssh-keys?page_size=10&page=2").json()
    assert page["count"] == 30
    assert len(page["results"]) == 10
    assert page["next"] and page["previous"]

    def queries(path: str) -> int:
        with factories.QueryCounter() as counted:
            assert client.get(path).status_code == 200
        return counted.n

    assert queries("/api/v1/ssh-keys?page_size=2") == queries("/api/v1/ssh-keys?page_size=30")
    # key lookup, last-used stamp (at most once a minute), count, page
    assert 2 <= queries("/api/v1/ssh-keys?page_size=30") <= 4
    for path in ("/api/v1/members", "/api/v1/audit-events"):
        assert 2 <= queries(path) <= 4, path


def test_audit_events_filter_by_action_and_time(org, key_client):
    client = key_client("owner")
    services.ssh_key_create(actor=Actor.system(org), public_key=factories.ed25519_public_key())
    actions = {
        row["action"] for row in client.get("/api/v1/audit-events?action=ssh_key").json()["results"]
    }
    assert actions == {"ssh_key.create"}
    assert client.get("/api/v1/audit-events?since=2999-01-01T00:00:00Z").json()["count"] == 0
    assert_error(client.get("/api/v1/audit-events?since=yesterday"), 400, "invalid")


def test_api_is_throttled_per_key(settings, key_client):
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    original = settings.REST_FRAMEWORK
    settings.REST_FRAMEWORK = {
        **original,
        "DEFAULT_THROTTLE_RATES": {"anon": "60/min", "client": "3/min"},
    }
    api_settings.reload()
    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    try:
        client = key_client("viewer")
        for _ in range(3):
            assert client.get("/api/v1/organization").status_code == 200
        response = client.get("/api/v1/organization")
        assert_error(response, 429, "throttled")
        assert response.json()["error"]["details"]["retry_after_seconds"] > 0
        # Another key has its own budget.
        assert key_client("viewer").get("/api/v1/organization").status_code == 200
    finally:
        settings.REST_FRAMEWORK = original
        api_settings.reload()
        SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES


def test_schema_documents_every_endpoint_and_docs_page_loads(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, methods in {
        "/api/v1/organization": {"get"},
        "/api/v1/members": {"get"},
        "/api/v1/ssh-keys": {"get", "post"},
        "/api/v1/ssh-keys/{id}": {"get", "delete"},
        "/api/v1/audit-events": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    assert "403" in paths["/api/v1/ssh-keys"]["post"]["responses"]
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


def test_schema_generation_has_no_warnings():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
