"""Shared OpenAPI pieces: the error envelope every operation may answer with."""

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.JSONField(),
            },
        )
    },
)


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    descriptions = {
        400: "Invalid input",
        401: "Not authenticated",
        403: "Role does not allow this",
        402: "The organisation cannot pay for this (no credit, spend limit, overdue invoice)",
        404: "Not found in this organisation",
        409: "Conflicts with the current state",
        429: "Throttled",
    }
    return {
        code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in statuses
    }
