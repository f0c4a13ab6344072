"""Property-based fuzzing of every operation in ``/api/schema/`` with Schemathesis.

The schema is loaded from the portal's WSGI application (no server). Each operation is called,
with an owner's API key, against an organisation that owns at least three of everything
(tests/factories/api.py): running, stopped and pending instances, volumes, SSH keys, members,
ledger entries, invoices and audit events. Path ids are often those objects' ids, so the
fuzzing gets past the 404s, and the Accept header varies. Each response must:

- not be a 5xx;
- conform to the schema: a documented status code and content type, a body that matches the
  documented schema, the documented headers;
- be, when it is a 4xx, the one error shape ``{"error": {"code", "message", "details"}}``;
- be a 405 with an ``Allow`` header for a method the operation does not have, and a 401 when
  the key is missing or wrong.

Examples are bounded per operation (the whole run takes about 30 s of CPU), drawn afresh on each
run but fixed with ``CI=true``. Destructive operations (terminate, delete) are fine: each
operation's test builds its own world inside its own transaction.
"""

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.api.openapi import portal_schema
from tests.factories.api import api_world

pytestmark = pytest.mark.django_db


schema = portal_schema()

# Ids of the world's objects, by the collection their operation's path starts with. The path
# id of an operation is either a generated integer or, as often, one of these: without them,
# almost every call to /instances/{id}/... would be a 404.
WORLD_IDS: dict[str, list[int]] = {}


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    if not path_parameters or "id" not in path_parameters:
        return st.just(path_parameters)
    collection = context.operation.path.removeprefix("/api/v1/").split("/")[0]
    ids = WORLD_IDS.get(collection)
    if not ids:
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(ids).map(lambda pk: {**path_parameters, "id": pk}),
    )


# What a client may put in Accept. Not text/html: browsers get DRF's browsable API, a page
# for people that the schema does not describe.
ACCEPT = ["application/json", "*/*", "application/json; indent=4", "application/pdf", "text/xml"]


@schema.hook
def flatmap_headers(context, headers):
    return st.one_of(
        st.just(headers),
        st.sampled_from(ACCEPT).map(lambda accept: {**(headers or {}), "Accept": accept}),
    )


def error_body_has_the_documented_shape(ctx, response, case):
    """Every 4xx answers ``{"error": {"code": str, "message": str, "details": ...}}``."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.text[:200]!r}"
        ) from exc
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    missing_required_header,
    unsupported_method,
    ignored_auth,
    error_body_has_the_documented_shape,
    # Not ``negative_data_rejection``: the API is deliberately lenient where that check wants
    # a 4xx. An empty query parameter (``?until=``) means "no filter" (django-filter's rule),
    # unknown headers are ignored, and a batch of usage events answers 200 with each refused
    # event listed under ``rejected``.
]


@pytest.fixture
def _unthrottled(settings):
    """No 429 during fuzzing: the per-key and anonymous budgets are raised for the test."""
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    original = settings.REST_FRAMEWORK
    settings.REST_FRAMEWORK = {
        **original,
        "DEFAULT_THROTTLE_RATES": {"anon": "1000000/min", "client": "1000000/min"},
    }
    api_settings.reload()
    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES
    yield
    settings.REST_FRAMEWORK = original
    api_settings.reload()
    SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES


@pytest.fixture
def world_key(memory_backend, _unthrottled):
    """An owner's API key for an organisation with something of everything."""
    world = api_world()
    WORLD_IDS.clear()
    WORLD_IDS.update(world.ids)
    yield world.key("owner")
    WORLD_IDS.clear()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    # CI replays the same examples on every run (a red CI is then a change, not luck); a
    # developer's run draws new ones each time and keeps exploring.
    derandomize=os.environ.get("CI") == "true",
    # The world is built once per operation, not per example: an example may terminate an
    # instance or delete a key, and later examples then answer 404 or 409, which the contract
    # covers as well as the 200s.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation_keeps_its_contract(case, world_key):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {world_key}"},
        checks=CHECKS,
    )
