"""The portal's error type. Each domain error has a stable ``code`` and a human sentence.

The API renders it as ``{"error": {"code", "message", "details"}}`` with ``status``; pages show
the same sentence next to the field or action.
"""

from typing import Any


class PortalError(Exception):
    code = "error"
    status = 400
    default_message = "The request could not be completed."

    def __init__(
        self, message: str | None = None, *, code: str | None = None, details: Any = None
    ) -> None:
        self.message = message or self.default_message
        if code:
            self.code = code
        self.details = details if details is not None else {}
        super().__init__(self.message)


class InvalidInput(PortalError):
    code = "invalid"
    default_message = "Some of the input is not valid."


class PermissionDenied(PortalError):
    code = "permission_denied"
    status = 403
    default_message = "Your role in this organisation does not allow this."


class NotFound(PortalError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class Conflict(PortalError):
    code = "conflict"
    status = 409
    default_message = "This conflicts with the current state."


class Throttled(PortalError):
    code = "throttled"
    status = 429
    default_message = "Too many attempts. Try again later."


# Errors a page shows next to its form or action. ``NotFound`` is not among them: it propagates
# and the portal answers with its 404 page, exactly as for an id that never existed.
SHOWN_ON_PAGE = (InvalidInput, PermissionDenied, Conflict, Throttled)
