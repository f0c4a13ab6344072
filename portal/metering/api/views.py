"""Usage API: CloudEvents ingestion and the usage figures."""

from datetime import timedelta

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import (
    OpenApiExample,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.roles import Action
from portal.api.parsers import JSONParser
from portal.api.schema import error_responses
from portal.errors import InvalidInput
from portal.metering import ingest
from portal.metering.errors import MeteringErrorCode
from portal.metering.selectors import GROUPS, usage_summary


class CloudEventParser(JSONParser):
    media_type = "application/cloudevents+json"


class CloudEventBatchParser(JSONParser):
    media_type = "application/cloudevents-batch+json"


IngestResultSerializer = inline_serializer(
    name="UsageIngestResult",
    fields={
        "accepted": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(
            help_text=_("Already received (same source and id); ignored.")
        ),
        "rejected": inline_serializer(
            name="UsageEventRejection",
            many=True,
            fields={
                "index": serializers.IntegerField(),
                "id": serializers.JSONField(
                    allow_null=True,
                    help_text=_(
                        "The event's id as sent when it is text (shortened past 255 characters), "
                        "a number, a boolean or null; other values are quoted back as text."
                    ),
                ),
                "code": serializers.CharField(),
                "reason": serializers.CharField(),
            },
        ),
    },
)


class CloudEventSerializer(serializers.Serializer):
    """For the schema only: events are validated one by one by the ingest service."""

    specversion = serializers.CharField(default="1.0")
    id = serializers.CharField()
    source = serializers.CharField()
    type = serializers.CharField(help_text=_("A meter key defined by operators."))
    subject = serializers.CharField()
    time = serializers.DateTimeField(required=False)
    data = serializers.JSONField(help_text=_('A number, or {"value": number}.'))


@extend_schema_view(post=extend_schema(summary="Report usage events (CloudEvents)"))
class UsageEventIngestView(APIView):
    actions = {"POST": Action.INSTANCE_MANAGE}
    parser_classes = [CloudEventParser, CloudEventBatchParser, JSONParser]

    @extend_schema(
        operation_id="usage_events_create",
        request={
            "application/cloudevents+json": CloudEventSerializer,
            "application/cloudevents-batch+json": CloudEventSerializer(many=True),
        },
        responses={200: IngestResultSerializer, **error_responses(400, 401, 403, 415)},
        examples=[
            OpenApiExample(
                "One event",
                value={
                    "specversion": "1.0",
                    "id": "evt-1",
                    "source": "inference/llama",
                    "type": "tokens.generated",
                    "subject": "endpoint-7",
                    "time": "2026-11-26T10:00:00Z",
                    "data": {"value": 1234},
                },
                request_only=True,
            )
        ],
    )
    def post(self, request):
        content_type = request.content_type.split(";")[0].strip()
        data = request.data
        if content_type == CloudEventBatchParser.media_type:
            if not isinstance(data, list):
                raise InvalidInput(
                    _("A batch is a JSON array of events."), code=MeteringErrorCode.BATCH_INVALID
                )
            events = data
        else:
            if not isinstance(data, dict):
                raise InvalidInput(
                    _(
                        "Send one event as a JSON object, or a batch as "
                        "application/cloudevents-batch+json."
                    ),
                    code=MeteringErrorCode.EVENT_INVALID,
                )
            events = [data]
        result = ingest.usage_events_ingest(actor=request.actor, events=events)
        if content_type != CloudEventBatchParser.media_type and result.rejected:
            rejection = result.rejected[0]
            raise InvalidInput(rejection.reason, code=rejection.code)
        return Response(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "rejected": [r.__dict__ for r in result.rejected],
            }
        )


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(
        required=False, help_text=_("Inclusive; defaults to the start of this month (UTC).")
    )
    end = serializers.DateTimeField(required=False, help_text=_("Exclusive; defaults to now."))
    group_by = serializers.ChoiceField(choices=GROUPS, default="day")

    def validate(self, attrs):
        from django.utils import timezone

        now = timezone.now()
        start = attrs.get("start") or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = attrs.get("end") or now
        if end <= start:
            raise serializers.ValidationError({"end": _("end must be after start.")})
        if end - start > timedelta(days=400):
            raise serializers.ValidationError({"end": _("At most 400 days at a time.")})
        return {**attrs, "start": start, "end": end}


# Costs are rated at full precision, so they have as many decimals as the rating gives; the
# schema says "a decimal number in a string" without a digit limit.
FULL_PRECISION = serializers.DecimalField(
    max_digits=None, decimal_places=None, help_text=_("Full precision, not rounded.")
)


@extend_schema_view(get=extend_schema(summary="Usage and its cost for a period"))
class UsageView(APIView):
    actions = {"GET": Action.INSTANCE_VIEW}

    @extend_schema(
        operation_id="usage_retrieve",
        parameters=[UsageQuerySerializer],
        responses={
            200: inline_serializer(
                name="Usage",
                fields={
                    "currency": serializers.CharField(),
                    "start": serializers.DateTimeField(),
                    "end": serializers.DateTimeField(),
                    "group_by": serializers.CharField(),
                    "total_cost": FULL_PRECISION,
                    "rows": inline_serializer(
                        name="UsageRow",
                        many=True,
                        fields={
                            "key": serializers.CharField(),
                            "label": serializers.CharField(),
                            "quantities": serializers.DictField(
                                child=serializers.DecimalField(max_digits=30, decimal_places=6)
                            ),
                            "cost": FULL_PRECISION,
                        },
                    ),
                },
            ),
            **error_responses(400, 401, 403),
        },
        description="Usage and its cost so far (full precision, the organisation's currency), "
        "including the hour not closed yet. The usage page and its CSV show the same figures.",
    )
    def get(self, request):
        params = UsageQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        summary = usage_summary(organization=request.actor.organization, **params.validated_data)
        return Response(
            {
                "currency": summary.currency,
                "start": summary.start,
                "end": summary.end,
                "group_by": summary.group_by,
                # full precision (Decimal's own digits); invoices round, once, per line
                "total_cost": str(summary.total_cost),
                "rows": [
                    {
                        "key": row.key,
                        "label": row.label,
                        "quantities": {k: str(v) for k, v in sorted(row.quantities.items())},
                        "cost": str(row.cost),
                    }
                    for row in summary.rows
                ],
            }
        )
