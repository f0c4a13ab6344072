"""Choosing a backend from settings, and the system check that validates those settings."""

import pytest
from django.core.checks import run_checks

from portal.provisioning import InvalidBackendError, get_backend, reset_backends
from portal.provisioning.checks import check_backends
from portal.provisioning.libvirt import LibvirtBackend
from portal.provisioning.simulated import SimulatedBackend

SIMULATED = "portal.provisioning.simulated.SimulatedBackend"


def test_the_default_settings_give_the_simulated_backend_once_per_process(settings):
    assert settings.PROVISIONING_BACKEND == "simulated"
    backend = get_backend()
    assert isinstance(backend, SimulatedBackend)
    assert backend.alias == "simulated"
    assert (
        backend.boot_seconds
        == settings.PROVISIONING_BACKENDS["simulated"]["OPTIONS"]["boot_seconds"]
    )
    assert get_backend() is backend
    assert isinstance(get_backend("libvirt"), LibvirtBackend)  # constructing it connects to nothing
    reset_backends()
    assert get_backend() is not backend


def test_unknown_alias(settings):
    settings.PROVISIONING_BACKEND = "openstack"
    with pytest.raises(
        InvalidBackendError,
        match=r"'openstack', which is not one of PROVISIONING_BACKENDS \(libvirt, simulated, slurm\)",
    ):
        get_backend()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"BACKEND": "portal.provisioning.nothing.Here"},
            r"BACKEND 'portal.provisioning.nothing.Here' cannot be imported",
        ),
        (
            {"BACKEND": "portal.provisioning.simulated.Nope"},
            r"cannot be imported: Module .* does not define .*Nope",
        ),
        (
            {"BACKEND": "not-a-dotted-path"},
            r"cannot be imported: not-a-dotted-path doesn't look like a module path",
        ),
        (
            {"BACKEND": "portal.provisioning.base.GpuDevice"},
            r"GpuDevice is not a ProvisioningBackend",
        ),
        ({"OPTIONS": {}}, r"\['broken'\] has no BACKEND dotted path"),
        (
            {"BACKEND": SIMULATED, "OPTIONS": {"boot_secs": 1}},
            r"OPTIONS are not accepted .*boot_secs",
        ),
        (
            {"BACKEND": SIMULATED, "OPTIONS": {"ip_network": "nonsense"}},
            r"OPTIONS are not accepted .*ip_network",
        ),
        ({"BACKEND": SIMULATED, "OPTIONS": ["boot_seconds"]}, r"OPTIONS must be a dict"),
    ],
)
def test_bad_backend_settings_raise_a_clear_error(settings, config, message):
    settings.PROVISIONING_BACKENDS = {"broken": config}
    settings.PROVISIONING_BACKEND = "broken"
    with pytest.raises(InvalidBackendError, match=message) as raised:
        get_backend()
    errors = check_backends()
    assert [error.id for error in errors] == ["provisioning.E001"]
    assert errors[0].obj == "PROVISIONING_BACKENDS['broken']"
    assert errors[0].msg == str(raised.value)  # the check says what get_backend() would raise


def test_the_check_passes_with_the_shipped_settings():
    assert check_backends() == []


def test_the_check_is_registered_and_reports_an_unknown_alias(settings):
    settings.PROVISIONING_BACKEND = "kubernetes"
    errors = run_checks(tags=["provisioning"])
    assert [error.id for error in errors] == ["provisioning.E001"]
    assert "PROVISIONING_BACKEND is 'kubernetes'" in errors[0].msg
    assert errors[0].is_serious()


def test_the_check_reports_every_broken_alias(settings):
    settings.PROVISIONING_BACKENDS = {
        **settings.PROVISIONING_BACKENDS,
        "typo": {
            "BACKEND": "portal.provisioning.simulated.SimulatedBackend",
            "OPTIONS": {"stop_second": 1},
        },
        "libvirt": {
            "BACKEND": "portal.provisioning.libvirt.LibvirtBackend",
            "OPTIONS": {"image_dir": "images"},
        },
    }
    errors = run_checks(tags=["provisioning"])
    assert sorted(error.obj for error in errors) == [
        "PROVISIONING_BACKENDS['libvirt']",
        "PROVISIONING_BACKENDS['typo']",
    ]
    assert any("image_dir must be an absolute path" in error.msg for error in errors)


@pytest.mark.parametrize("backends", [{}, None, ["simulated"]])
def test_the_check_reports_missing_backends(settings, backends):
    settings.PROVISIONING_BACKENDS = backends
    errors = check_backends()
    assert [error.id for error in errors] == ["provisioning.E001"]
    assert "non-empty dict" in errors[0].msg
