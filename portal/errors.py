"""The portal's error type. Each domain error has a stable ``code`` and a human sentence.

The API renders it as ``{"error": {"code", "message", "details"}}`` with ``status``; pages show
the same sentence next to the field or action.
"""

from enum import StrEnum
from typing import Any

from django.utils.translation import gettext_lazy as _

# Every registry of error codes: each app lists its codes once, in a ``StrEnum`` of its
# ``errors.py`` marked with ``@error_codes``, and raises ``InvalidInput(..., code=Enum.MEMBER)``,
# never a bare string (tests/api/test_error_codes.py checks the code base for that). The API
# schema documents the union as the values of ``error.code``.
REGISTRIES: list[type[StrEnum]] = []


def error_codes[E: type[StrEnum]](registry: E) -> E:
    """Class decorator: register an app's ``StrEnum`` of error codes."""
    if registry not in REGISTRIES:
        REGISTRIES.append(registry)
    return registry


def all_codes() -> list[str]:
    """The distinct codes of every registry (each installed app's ``errors`` module), sorted."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("errors")
    return sorted({str(member) for registry in REGISTRIES for member in registry})


@error_codes
class ErrorCode(StrEnum):
    """The codes every app shares."""

    ERROR = "error"
    INVALID = "invalid"
    AMOUNT_INVALID = "amount_invalid"  # an amount of money that cannot be read (portal.money)
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    THROTTLED = "throttled"


class PortalError(Exception):
    code: str = ErrorCode.ERROR
    status = 400
    default_message = _("The request could not be completed.")

    def __init__(
        self, message: str | None = None, *, code: str | None = None, details: Any = None
    ) -> None:
        self.message = str(message or self.default_message)  # in the language of the moment
        if code:
            self.code = code
        self.details = details if details is not None else {}
        super().__init__(self.message)


class InvalidInput(PortalError):
    code = ErrorCode.INVALID
    default_message = _("Some of the input is not valid.")


class PermissionDenied(PortalError):
    code = ErrorCode.PERMISSION_DENIED
    status = 403
    default_message = _("Your role in this organisation does not allow this.")


class NotFound(PortalError):
    code = ErrorCode.NOT_FOUND
    status = 404
    default_message = _("Not found.")


class Conflict(PortalError):
    code = ErrorCode.CONFLICT
    status = 409
    default_message = _("This conflicts with the current state.")


class Throttled(PortalError):
    code = ErrorCode.THROTTLED
    status = 429
    default_message = _("Too many attempts. Try again later.")


# Errors a page shows next to its form or action. ``NotFound`` is not among them: it propagates
# and the portal answers with its 404 page, exactly as for an id that never existed.
SHOWN_ON_PAGE = (InvalidInput, PermissionDenied, Conflict, Throttled)
