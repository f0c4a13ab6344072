"""The slurm backend's reading of Slurm's strings and its options (no cluster needed; the
real-cluster tests are in tests/slurm)."""

import pytest

from portal.provisioning import InvalidBackendError, build_backend
from portal.provisioning.slurm import _expand_nodes, _gres_indexes, _indexes


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("gpu1", ["gpu1"]),
        ("gpu[1-2,4]", ["gpu1", "gpu2", "gpu4"]),
        ("gpu[01-03],login1", ["gpu01", "gpu02", "gpu03", "login1"]),
        ("", []),
    ],
)
def test_host_lists(text, names):
    assert _expand_nodes(text) == names


def test_gpu_indexes():
    assert _indexes("0-2,5") == (0, 1, 2, 5)
    assert _indexes("N/A") == ()
    assert _gres_indexes("gpu:h200:2(IDX:0-1)") == (0, 1)
    assert _gres_indexes("gpu:h200:0(IDX:N/A)") == ()
    assert _gres_indexes("gpu:h200:3(IDX:0,6-7),gpu:a100:1(IDX:2)") == (0, 2, 6, 7)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu_types": {"h200": "h200-sxm-141gb"}, "socket": "/run/s"}, "region"),
        ({"region": "r", "socket": "/run/s"}, "gpu_types"),
        ({"region": "r", "gpu_types": {"h200": "x"}}, "exactly one of socket and url"),
        ({"region": "r", "gpu_types": {"h200": "x"}, "url": "ftp://x"}, "not an http"),
    ],
)
def test_bad_options_fail_at_start(settings, options, message):
    settings.PROVISIONING_BACKENDS = {
        "bad": {"BACKEND": "portal.provisioning.slurm.SlurmBackend", "OPTIONS": options}
    }
    with pytest.raises(InvalidBackendError, match=message):
        build_backend("bad")
