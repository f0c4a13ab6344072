"""The Slurm cluster the tests in this folder run against (tests/slurm/cluster.py)."""

import pytest

from tests.conftest import missing
from tests.slurm.cluster import SlurmCluster, missing_parts, port_block


@pytest.fixture(scope="session")
def slurm_cluster():
    """One real cluster per test process: 4 nodes x 8 fake H200 GPUs, ready when all are idle."""
    lacking = missing_parts()
    if lacking:
        missing(f"a Slurm cluster needs: {', '.join(lacking)}")
    cluster = SlurmCluster(port_block())
    try:
        cluster.start()
        print(f"\nSlurm cluster {cluster.cluster_name} ready in {cluster.started_in:.1f}s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The cluster with no jobs before and after the test, and every node back in service."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()
    slurm_cluster.resume_all()


REGION = "cn-slurm-1"
H200 = "h200-sxm-141gb"


@pytest.fixture
def slurm_backend(settings, slurm, db):
    """The portal's "slurm" backend pointed at the test cluster, its region and GPU models in
    the catalog; returns the backend."""
    from portal.provisioning import get_backend, reset_backends
    from tests.factories import catalog

    catalog.gpu_models()
    catalog.region(code=REGION, name="Slurm test cluster", country="CN")
    settings.PROVISIONING_BACKENDS = {
        **settings.PROVISIONING_BACKENDS,
        "slurm": {
            "BACKEND": "portal.provisioning.slurm.SlurmBackend",
            "OPTIONS": {
                "socket": str(slurm.rest_socket),
                "region": REGION,
                "gpu_types": {"h200": H200},
                "allocate_wait_seconds": 3,
            },
        },
    }
    reset_backends()
    yield get_backend("slurm")
    reset_backends()
