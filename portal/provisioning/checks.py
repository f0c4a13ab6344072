"""System checks: a misconfigured provisioning backend fails at start, not at the first launch."""

from django.conf import settings
from django.core.checks import Error

from portal.provisioning import InvalidBackendError, build_backend

HINT = (
    "PROVISIONING_BACKENDS maps aliases to {'BACKEND': 'dotted.path.Class', 'OPTIONS': {...}}; "
    "PROVISIONING_BACKEND (environment variable of the same name) names the alias in use."
)


def check_backends(app_configs=None, **kwargs) -> list[Error]:
    """Every configured backend imports and accepts its options; the selected alias exists."""
    backends = getattr(settings, "PROVISIONING_BACKENDS", None)
    if not isinstance(backends, dict) or not backends:
        return [
            Error(
                "PROVISIONING_BACKENDS must be a non-empty dict of backend aliases.",
                hint=HINT,
                id="provisioning.E001",
            )
        ]
    errors = []
    selected = getattr(settings, "PROVISIONING_BACKEND", None)
    if selected not in backends:
        errors.append(
            Error(
                f"PROVISIONING_BACKEND is {selected!r}, which is not one of PROVISIONING_BACKENDS "
                f"({', '.join(sorted(map(str, backends)))}).",
                hint=HINT,
                id="provisioning.E001",
            )
        )
    for alias in backends:
        try:
            build_backend(alias)  # constructing a backend connects to nothing
        except InvalidBackendError as exc:
            errors.append(
                Error(
                    str(exc),
                    hint=HINT,
                    obj=f"PROVISIONING_BACKENDS[{alias!r}]",
                    id="provisioning.E001",
                )
            )
    return errors
