import pytest

from portal.provisioning import reset_backends


@pytest.fixture(autouse=True)
def _fresh_backends():
    reset_backends()
    yield
    reset_backends()
