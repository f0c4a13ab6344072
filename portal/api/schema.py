"""Shared OpenAPI pieces: the error envelope every operation may answer with."""

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

from portal.api.errors import ApiErrorCode  # noqa: F401  (registers the HTTP layer's codes)
from portal.errors import all_codes

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(help_text=_("Stable and machine-readable.")),
                "message": serializers.CharField(help_text=_("A sentence for people.")),
                "details": serializers.JSONField(
                    help_text=_("Per-field messages for 400 `invalid`; other facts otherwise.")
                ),
            },
        )
    },
)

DESCRIPTIONS = {
    400: "Invalid input",
    401: "Not authenticated",
    402: "The organisation cannot pay for this (no credit, spend limit, overdue invoice)",
    403: "Role does not allow this",
    404: "Not found in this organisation",
    406: "The Accept header asks for a type the API does not answer with (it answers JSON)",
    409: "Conflicts with the current state",
    415: "Unsupported request content type",
    429: "Throttled",
}

# Every operation needs a key (401), negotiates its answer's type (406) and is throttled per
# key (429).
ALWAYS = (401, 406, 429)


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented error answers of an operation: ``statuses`` plus 401, 406 and 429."""
    return {
        code: OpenApiResponse(ErrorSerializer, description=DESCRIPTIONS[code])
        for code in sorted({*statuses, *ALWAYS})
    }


def list_responses(serializer, *statuses: int) -> dict:
    """A paginated list: its page of ``serializer`` rows, 400 for a malformed page, page size
    or filter, 404 for a page past the last, and ``statuses``."""
    return {200: serializer(many=True), **error_responses(400, 403, 404, *statuses)}


def document_error_codes(result: dict, generator, request, public) -> dict:
    """A schema post-processing hook: ``error.code`` lists every registered code, read when the
    schema is built (when every app's registry is loaded)."""
    body = result.get("components", {}).get("schemas", {}).get("ErrorBody")
    if body is not None:
        body["properties"]["code"]["enum"] = all_codes()
    return result
