"""Fixtures of the instance and volume pages and the compute admin: a small catalog, an
organisation's SSH key, launches through the service, and the simulated backend with instant
boots (``pytestmark = pytest.mark.usefixtures("fast_simulated_backend")`` where wanted)."""

import itertools

import pytest

from portal.accounts import services as account_services
from portal.compute import services
from portal.compute.models import Instance
from tests import factories
from tests.factories.compute import pages_catalog

_seq = itertools.count(1)


@pytest.fixture
def fast_simulated_backend(simulated_backend):
    """The simulated backend (machines in the database) with instant boots and stops."""
    return simulated_backend(boot_seconds=0, stop_seconds=0)


@pytest.fixture
def compute_catalog(db):
    """``gpu_1x_h200``: 3.50 USD/h in us-east-1, 3.10 in us-west-1 (no host there);
    ``gpu_8x_h200``: 28.00 in us-east-1 only. ``ubuntu-cuda`` is the default image."""
    return pages_catalog()


@pytest.fixture
def ssh_key(org, owner):
    return account_services.ssh_key_create(
        actor=factories.actor(org, owner), name="laptop", public_key=factories.ed25519_public_key()
    )


@pytest.fixture
def launch(org, owner, ssh_key, compute_catalog):
    """``launch("name")`` launches through the service; the instance stays pending."""

    def make(name: str | None = None, instance_type: str = "gpu_1x_h200", **extra) -> Instance:
        request = services.LaunchRequest(
            name=name or f"box-{next(_seq)}",
            instance_type=instance_type,
            region=extra.pop("region", "us-east-1"),
            ssh_key_ids=(ssh_key.pk,),
            **extra,
        )
        instance, _ = services.instance_launch(actor=factories.actor(org, owner), request=request)
        return instance

    return make
