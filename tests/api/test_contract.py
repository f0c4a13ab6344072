"""The API's shared behaviour: authentication, error shape, pagination, schema, throttling."""

import pytest
import yaml

from portal.accounts import services
from portal.accounts.types import Actor
from tests import factories
from tests.api.openapi import components, list_operations, portal_schema
from tests.factories.api import ROWS, api_world

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


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/api/v1/ssh-keys", "application/json"),
        ("/api/v1/instances", "application/json"),
        ("/api/v1/usage-events", "application/cloudevents-batch+json"),
    ],
)
def test_json_nested_thousands_deep_is_a_400_not_a_500(key_client, path, content_type):
    body = "[" * 100_000 + "]" * 100_000
    response = key_client("owner").post(path, body, content_type=content_type)
    assert_error(response, 400, "invalid_json")


def test_pages_have_counts_and_links(org, key_client):
    client = key_client("owner")
    actor = Actor.system(org)
    for _ in range(30):
        services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
    page = client.get("/api/v1/ssh-keys?page_size=10&page=2").json()
    assert page["count"] == 30
    assert len(page["results"]) == 10
    assert page["next"] and page["previous"]
    assert client.get("/api/v1/ssh-keys?page_size=10&page=last").json()["next"] is None
    with factories.QueryCounter() as counted:
        assert client.get("/api/v1/ssh-keys?page_size=30").status_code == 200
    # key lookup, last-used stamp (at most once a minute), count, page
    assert 2 <= counted.n <= 4


LIST_PATHS = list_operations(portal_schema().raw_schema)


def test_the_schema_has_the_list_operations_we_know():
    """A guard for the enumeration below: it finds the lists, and the new ones too."""
    assert {
        "/api/v1/audit-events",
        "/api/v1/instance-types",
        "/api/v1/instances",
        "/api/v1/instances/{id}/events",
        "/api/v1/invoices",
        "/api/v1/ledger",
        "/api/v1/members",
        "/api/v1/ssh-keys",
        "/api/v1/volumes",
    } <= set(LIST_PATHS)


def test_no_operation_answers_an_unpaginated_array():
    """Every list is a page (``count``, ``next``, ``previous``, ``results``), never a bare array:
    a bare array cannot grow a count or a next link later without breaking its clients."""
    raw = portal_schema().raw_schema
    bare = []
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                for media_type, content in response.get("content", {}).items():
                    if components(raw, content.get("schema", {})).get("type") == "array":
                        bare.append(f"{method.upper()} {path} {status} {media_type}")
    assert not bare, "Paginate these (portal.api.pagination.StandardPagination): " + ", ".join(bare)


def test_every_operation_has_a_summary():
    """The API docs name every operation in a line (Swagger UI and ReDoc list them by it)."""
    raw = portal_schema().raw_schema
    operations = [
        (method.upper(), path, operation.get("summary", ""))
        for path, item in raw["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) >= 30
    missing = [f"{method} {path}" for method, path, summary in operations if not summary.strip()]
    assert not missing, "Give these a summary (extend_schema(summary=...)): " + ", ".join(missing)
    summaries = [summary for _, _, summary in operations]
    assert len(set(summaries)) == len(summaries), "two operations share a summary"


@pytest.mark.parametrize("path", LIST_PATHS)
def test_every_list_paginates_and_its_query_count_does_not_grow_with_page_size(
    path, memory_backend
):
    world = api_world()
    client = factories.api_client_for(world.org, "owner")
    if "{id}" in path:  # a list inside an object: the first of that collection
        path = path.replace("{id}", str(world.ids[path.split("/")[3]][0]))
    url = path
    assert client.get(url).status_code == 200  # stamps the key's last use

    def page(query: str) -> tuple[dict, int]:
        with factories.QueryCounter() as counted:
            response = client.get(f"{url}?{query}")
        assert response.status_code == 200, response.content[:300]
        return response.json(), counted.n

    first, queries_for_one = page("page_size=1")
    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] >= ROWS, f"add {ROWS} rows for {path} in tests/factories/api.py"
    assert len(first["results"]) == 1 and first["next"] and first["previous"] is None
    second, _ = page("page_size=1&page=2")
    assert second["previous"] and second["results"] != first["results"]
    three, queries_for_three = page(f"page_size={ROWS}")
    assert len(three["results"]) == ROWS
    assert queries_for_one == queries_for_three, "one query per row: select or prefetch them"


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


# --- Defects the fuzzing found (tests/api/test_fuzz.py), each kept fixed ----------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page_size=0", "page_size"),
        ("page_size=-1", "page_size"),
        ("page_size=%C2%B2", "page_size"),  # "²" is a digit to str.isdigit, not to int()
    ],
)
def test_a_page_or_page_size_that_is_not_a_whole_number_from_1_is_a_400(key_client, query, field):
    response = key_client("owner").get(f"/api/v1/ssh-keys?{query}")
    assert_error(response, 400, "invalid")
    assert set(response.json()["error"]["details"]) == {field}


def test_a_page_past_the_last_is_a_documented_404_and_big_page_sizes_are_capped(key_client):
    client = key_client("owner")
    assert_error(client.get("/api/v1/ssh-keys?page=2"), 404, "not_found")
    assert client.get("/api/v1/ssh-keys?page_size=100000").status_code == 200
    paths = portal_schema().raw_schema["paths"]
    for path in LIST_PATHS:
        assert {"400", "404"} <= set(paths[path]["get"]["responses"]), path
        page_size = next(p for p in paths[path]["get"]["parameters"] if p["name"] == "page_size")
        assert page_size["schema"]["minimum"] == 1


@pytest.mark.parametrize(
    ("path", "name"),
    [("/api/v1/audit-events", "since"), ("/api/v1/ledger", "created_after")],
)
def test_time_filters_take_any_utc_offset_and_refuse_years_the_database_cannot_hold(
    key_client, path, name
):
    client = key_client("owner")
    # ISO 8601 and Python allow offsets up to ±23:59; PostgreSQL refused those past ±15:59 (500).
    response = client.get(path, {name: "2026-01-01T00:00:00-22:28"})
    assert response.status_code == 200, response.content[:300]
    assert_error(client.get(path, {name: "0161-06-14T20:51:19-23:37"}), 400, "invalid")
    assert_error(client.get(path, {name: "0001-01-01T00:00:00+14:00"}), 400, "invalid")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/ssh-keys/{}"),
        ("delete", "/api/v1/ssh-keys/{}"),
        ("get", "/api/v1/instances/{}"),
        ("get", "/api/v1/instances/{}/events"),
        ("post", "/api/v1/instances/{}/stop"),
        ("delete", "/api/v1/volumes/{}"),
        ("get", "/api/v1/invoices/{}"),
        ("get", "/api/v1/invoices/{}/pdf"),
    ],
)
def test_ids_too_big_for_the_database_are_404_not_500(key_client, method, path):
    client = key_client("owner")
    for pk in (2**63, 10**30):
        assert_error(getattr(client, method)(path.format(pk)), 404, "not_found")


def test_every_operation_documents_401_406_and_429_and_body_operations_415():
    for path, item in portal_schema().raw_schema["paths"].items():
        for method, operation in item.items():
            documented = set(operation["responses"])
            assert {"401", "429"} <= documented, f"{method} {path}"
            # a PDF or a fapiao file is answered whatever Accept says
            if not path.endswith(("/pdf", "/file")):
                assert "406" in documented, f"{method} {path}"
            if "requestBody" in operation:
                assert "415" in documented, f"{method} {path}"


def test_an_accept_header_the_api_cannot_answer_is_a_406_in_the_error_shape(key_client):
    response = key_client("owner").get("/api/v1/ssh-keys", HTTP_ACCEPT="text/xml")
    assert_error(response, 406, "not_acceptable")


def test_the_invoice_pdf_answers_a_client_that_asks_for_a_pdf(org, key_client):
    from billing.invoicing import services as invoicing

    invoice = invoicing.invoice_draft_refresh(org)
    client = key_client("billing")
    for accept in ("application/pdf", "*/*", "application/json"):
        response = client.get(f"/api/v1/invoices/{invoice.pk}/pdf", HTTP_ACCEPT=accept)
        assert response.status_code == 200, (accept, response.content[:200])
        assert response["Content-Type"] == "application/pdf"
        assert response.content.startswith(b"%PDF")
    # An error is JSON in the error shape, even to a client that asked for a PDF or a page.
    for accept in ("application/pdf", "text/html"):
        missing = client.get("/api/v1/invoices/999999/pdf", HTTP_ACCEPT=accept)
        assert_error(missing, 404, "not_found")


def test_a_key_that_asks_for_html_gets_the_browsable_page_not_a_500(key_client):
    # The page's context asked for the memberships of request.user, which is the key.
    response = key_client("owner").get("/api/v1/ssh-keys", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_instance_types_are_a_page_in_the_schema_as_in_the_answer(key_client):
    raw = portal_schema().raw_schema
    ok = raw["paths"]["/api/v1/instance-types"]["get"]["responses"]["200"]
    ref = ok["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/PaginatedInstanceTypeList")
    body = key_client("viewer").get("/api/v1/instance-types").json()
    assert set(body) == {"count", "next", "previous", "results"}


def conforms(operation: str, key: str, **case) -> dict:
    """Call ``operation`` ("GET /api/v1/...") and check its answer against the schema."""
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    method, path = operation.split(" ")
    response = (
        portal_schema()[path][method]
        .Case(**case)
        .call_and_validate(
            headers={"Authorization": f"Bearer {key}", **case.pop("headers", {})},
            checks=[status_code_conformance, response_schema_conformance],
        )
    )
    return response.json()


def test_image_names_with_dots_conform_to_the_schema(org):
    from portal.catalog.models import Image

    Image.objects.create(name="ubuntu-24.04-cuda-13.0", os="Ubuntu 24.04")
    body = conforms("GET /api/v1/images", factories.api_key_secret(org, "viewer"))
    assert [image["name"] for image in body["results"]] == ["ubuntu-24.04-cuda-13.0"]


def test_usage_costs_at_full_precision_conform_to_the_schema(memory_backend):
    from datetime import timedelta

    from django.utils import timezone

    world = api_world()  # a running instance and volumes: costs with many decimals
    now = timezone.now()
    body = conforms(
        "GET /api/v1/usage",
        world.key("viewer"),
        query={"start": (now - timedelta(days=1)).isoformat(), "end": now.isoformat()},
    )
    assert len(body["total_cost"].split(".")[-1]) > 12 or body["total_cost"] == "0"


def test_refused_events_quote_back_ids_that_are_not_text_and_conform_to_the_schema(org):
    body = conforms(
        "POST /api/v1/usage-events",
        factories.api_key_secret(org, "member"),
        body=[{"specversion": "1.0", "id": False, "source": "s", "type": "t", "subject": "x"}],
        media_type="application/cloudevents-batch+json",
    )
    assert body["rejected"][0]["id"] is False
