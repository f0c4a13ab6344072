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
    """The cluster with no jobs before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()
