"""Fapiao API: the requests (listed, one with its lines, and made over paid invoices), what
can still be requested, and the issued file. Another organisation's request answers 404."""

from django.http import Http404
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api.views import PdfOrJsonError
from billing.fapiao import selectors
from billing.fapiao import services as fapiao
from billing.fapiao.views import file_response
from billing.models import FapiaoCoverage, FapiaoKind, FapiaoLine, FapiaoRequest, FapiaoStatus
from portal.accounts.roles import Action
from portal.api.schema import error_responses, list_responses
from portal.errors import NotFound


class FapiaoLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = FapiaoLine
        fields = ["position", "name", "tax_code", "vat_rate", "net", "tax", "gross"]


class FapiaoCoverageSerializer(serializers.ModelSerializer):
    invoice_number = serializers.CharField(source="invoice.number")

    class Meta:
        model = FapiaoCoverage
        fields = ["invoice", "invoice_number", "amount"]


class FapiaoRequestSerializer(serializers.ModelSerializer):
    kind = serializers.ChoiceField(choices=FapiaoKind.choices)
    status = serializers.ChoiceField(choices=FapiaoStatus.choices)
    invoices = FapiaoCoverageSerializer(source="covers", many=True)
    lines = FapiaoLineSerializer(many=True)
    file_url = serializers.SerializerMethodField()

    class Meta:
        model = FapiaoRequest
        fields = [
            "id",
            "kind",
            "status",
            "currency",
            "amount",
            "net",
            "tax",
            "buyer_title",
            "buyer_tax_id",
            "buyer_address",
            "buyer_phone",
            "buyer_bank",
            "buyer_account",
            "email",
            "invoices",
            "lines",
            "created_at",
            "reject_reason",
            "number",
            "issued_on",
            "file_name",
            "file_url",
        ]

    def get_file_url(self, obj) -> str | None:
        return f"/api/v1/fapiao-requests/{obj.pk}/file" if obj.file_path else None


class FapiaoRequestCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=FapiaoKind.choices)
    invoices = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("Ids of paid invoices to cover.")
    )
    buyer_title = serializers.CharField(max_length=200)
    buyer_tax_id = serializers.CharField(
        max_length=24, help_text=_("The buyer's Unified Social Credit Code.")
    )
    buyer_address = serializers.CharField(max_length=300, required=False, allow_blank=True)
    buyer_phone = serializers.CharField(max_length=40, required=False, allow_blank=True)
    buyer_bank = serializers.CharField(max_length=200, required=False, allow_blank=True)
    buyer_account = serializers.CharField(max_length=64, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)


@extend_schema_view(
    get=extend_schema(
        summary="Fapiao requests and their status",
        responses=list_responses(FapiaoRequestSerializer),
    )
)
class FapiaoRequestListView(generics.ListAPIView):
    actions = {"GET": Action.BILLING_VIEW, "POST": Action.BILLING_MANAGE}
    serializer_class = FapiaoRequestSerializer
    queryset = FapiaoRequest.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.requests_of(self.request.actor.organization).prefetch_related("lines")

    @extend_schema(
        operation_id="fapiao_requests_create",
        summary="Request a fapiao for paid invoices",
        request=FapiaoRequestCreateSerializer,
        responses={201: FapiaoRequestSerializer, **error_responses(400, 401, 403, 404, 409, 415)},
    )
    def post(self, request):
        payload = FapiaoRequestCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        created = fapiao.request_create(
            actor=request.actor,
            kind=data["kind"],
            invoice_ids=data["invoices"],
            email=data.get("email", ""),
            buyer=fapiao.Buyer(
                title=data["buyer_title"],
                tax_id=data["buyer_tax_id"],
                address=data.get("buyer_address", ""),
                phone=data.get("buyer_phone", ""),
                bank=data.get("buyer_bank", ""),
                account=data.get("buyer_account", ""),
            ),
        )
        found = selectors.request_for(request.actor.organization, created.pk)
        return Response(FapiaoRequestSerializer(found).data, status=status.HTTP_201_CREATED)


class FapiaoRequestDetailView(APIView):
    actions = {"GET": Action.BILLING_VIEW}

    @extend_schema(
        operation_id="fapiao_requests_retrieve",
        summary="A fapiao request with its lines",
        responses={200: FapiaoRequestSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request, pk: int):
        found = selectors.request_for(request.actor.organization, pk)
        return Response(FapiaoRequestSerializer(found).data)


@extend_schema_view(get=extend_schema(summary="The issued fapiao file (PDF, OFD or XML)"))
class FapiaoFileView(APIView):
    actions = {"GET": Action.BILLING_VIEW}
    renderer_classes = [JSONRenderer]  # for errors; the file is returned as it is
    content_negotiation_class = PdfOrJsonError

    @extend_schema(
        operation_id="fapiao_requests_file",
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The fapiao file."
            ),
            **{s: r for s, r in error_responses(403, 404).items() if s != 406},
        },
    )
    def get(self, request, pk: int):
        found = selectors.request_for(request.actor.organization, pk)
        try:
            return file_response(found)
        except Http404 as exc:
            raise NotFound(str(exc)) from None
