"""Shared fixtures. Factories live in tests/factories/ (one module per area)."""

import os

import pytest
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from tests import factories

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip locally; fail in CI, where every real part must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing part is a failure)")
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    """Tests on the one Redis server (``redis_url``) use fixed database numbers and real Celery
    workers on them, so with pytest-xdist (``--dist loadgroup``, as scripts/test.sh runs it)
    they all go to one worker, one after another. Everything else runs in parallel: each
    worker has its own test database, temporary folders and live server port."""
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("redis"))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def require_postgres(db):
    if connection.vendor != "postgresql":
        missing("needs PostgreSQL (make test starts one)")


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        missing("needs Redis (make test starts one)")
    return url


@pytest.fixture
def org(db):
    return factories.organization()


@pytest.fixture
def owner(org):
    return factories.member(org, "owner")


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def key_client(org, owner):
    """An API client factory: ``key_client("viewer")`` authenticates with a key of that role."""

    def make(role: str = "owner", organization=None):
        client = APIClient()
        secret = factories.api_key_secret(organization or org, role)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def memory_backend(settings):
    """Instances run on the in-memory provisioning backend (instant, records its calls)."""
    from portal.provisioning import get_backend, reset_backends

    settings.PROVISIONING_BACKENDS = {
        **settings.PROVISIONING_BACKENDS,
        "memory": {"BACKEND": "portal.provisioning.simulated.InMemoryBackend"},
    }
    settings.PROVISIONING_BACKEND = "memory"
    reset_backends()
    yield get_backend("memory")
    reset_backends()


@pytest.fixture
def simulated_backend(settings):
    """``simulated_backend(boot_seconds=1, stop_seconds=1)``: instances run on the simulated
    backend (machines in the database) taking that long to boot and stop; returns it."""
    from portal.provisioning import get_backend, reset_backends

    def use(*, boot_seconds: float, stop_seconds: float = 0):
        simulated = settings.PROVISIONING_BACKENDS["simulated"]
        options = {**simulated["OPTIONS"], "boot_seconds": boot_seconds}
        options["stop_seconds"] = stop_seconds
        settings.PROVISIONING_BACKENDS = {
            **settings.PROVISIONING_BACKENDS,
            "simulated": {**simulated, "OPTIONS": options},
        }
        settings.PROVISIONING_BACKEND = "simulated"
        reset_backends()
        return get_backend("simulated")

    yield use
    reset_backends()
