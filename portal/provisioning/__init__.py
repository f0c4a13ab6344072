"""Provisioning backends. ``get_backend()`` returns the configured one."""

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from portal.provisioning.base import ProvisioningBackend


class InvalidBackendError(ImproperlyConfigured):
    pass


def backend_config(alias: str) -> dict:
    backends = getattr(settings, "PROVISIONING_BACKENDS", {})
    if alias not in backends:
        raise InvalidBackendError(
            f"PROVISIONING_BACKEND is '{alias}', which is not one of PROVISIONING_BACKENDS "
            f"({', '.join(sorted(backends)) or 'none defined'})."
        )
    config = backends[alias]
    if not isinstance(config, dict) or "BACKEND" not in config:
        raise InvalidBackendError(f"PROVISIONING_BACKENDS['{alias}'] has no BACKEND dotted path.")
    return config


def build_backend(alias: str) -> ProvisioningBackend:
    """Construct the backend ``alias`` names, uncached (the system check uses this)."""
    config = backend_config(alias)
    try:
        backend_class = import_string(config["BACKEND"])
    except ImportError as exc:
        raise InvalidBackendError(
            f"PROVISIONING_BACKENDS['{alias}'] BACKEND {config['BACKEND']!r} cannot be imported: {exc}"
        ) from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, ProvisioningBackend)):
        raise InvalidBackendError(f"{config['BACKEND']} is not a ProvisioningBackend.")
    options = config.get("OPTIONS", {})
    if not isinstance(options, dict):
        raise InvalidBackendError(f"PROVISIONING_BACKENDS['{alias}'] OPTIONS must be a dict.")
    try:
        return backend_class(alias=alias, **options)
    except InvalidBackendError:
        raise
    except (TypeError, ValueError, ImproperlyConfigured) as exc:
        raise InvalidBackendError(
            f"PROVISIONING_BACKENDS['{alias}'] OPTIONS are not accepted by {config['BACKEND']}: {exc}"
        ) from exc


@cache
def _backend(alias: str) -> ProvisioningBackend:
    return build_backend(alias)


def get_backend(alias: str | None = None) -> ProvisioningBackend:
    return _backend(alias or settings.PROVISIONING_BACKEND)


def reset_backends() -> None:
    """Forget constructed backends (tests that change settings call this)."""
    _backend.cache_clear()
