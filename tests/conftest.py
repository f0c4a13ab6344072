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


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _celery_join_guard_off():
    """Celery keeps "a task is running here, joining a result would block" in one process-wide
    flag that each eager task saves and restores; the concurrency tests run eager tasks in 40
    threads at once, which can leave it set, and a later test's ``result.get()`` then fails
    with "Never call result.get() within a task!". Every test starts with it off."""
    from celery._state import _set_task_join_will_block

    _set_task_join_will_block(False)


@pytest.fixture(autouse=True)
def _english_after_each_test():
    """A request in Chinese activates Chinese in the thread that served it (the test client
    runs views in the test's thread, and LocaleMiddleware activates the request's language
    without deactivating it after the response): every test starts in the default language."""
    from django.conf import settings
    from django.utils import translation

    translation.activate(settings.LANGUAGE_CODE)
    yield
    translation.activate(settings.LANGUAGE_CODE)


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


# Each pytest-xdist process uses its own eight Redis databases (scripts/test.sh starts Redis
# with enough of them), so real Celery workers of two processes never share a broker.
REDIS_DATABASES_PER_PROCESS = 8


@pytest.fixture
def redis_db(redis_url):
    """``redis_db(3)``: the URL of this test process's Redis database number 3."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker.removeprefix("gw") or 0) * REDIS_DATABASES_PER_PROCESS

    def url(number: int) -> str:
        assert 0 <= number < REDIS_DATABASES_PER_PROCESS
        return f"{redis_url}/{offset + number}"

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


# The real-VM tests take minutes of one worker (QEMU emulates here); run first, they pass beside
# the rest of the suite instead of after it (pytest-xdist hands out tests in collection order).
FIRST = ("tests/provisioning/test_real_vm.py",)
# Tests that share an expensive daemon run on one worker: one private libvirtd and one Slurm
# cluster per run, not one per worker. (pytest-xdist's own ``xdist_group`` marks have no effect
# under pytest 9, which keeps node ids elsewhere, so the grouping is a scheduler of our own.)
GROUPS = {"tests/provisioning/test_real_vm.py": "real-vm", "tests/slurm/": "slurm"}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))


def pytest_xdist_make_scheduler(config, log):
    """Load balancing one test at a time (xdist's ``load``), except that the tests of a group
    in ``GROUPS`` go to one worker together."""
    from xdist.scheduler import LoadScopeScheduling

    class DaemonGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((g for prefix, g in GROUPS.items() if nodeid.startswith(prefix)), nodeid)

    return DaemonGroups(config, log)
