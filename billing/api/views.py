"""Billing API: balance, ledger and invoices (read-only; paying happens on the billing page)."""

import django_filters
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api import serializers
from billing.invoicing import selectors as invoice_selectors
from billing.ledger import selectors as ledger_selectors
from billing.ledger import services
from billing.models import Invoice, InvoiceKind, InvoiceStatus, LedgerEntry
from billing.spend import services as spend
from portal.accounts.roles import Action
from portal.api.filters import BoundedDateTimeFilter
from portal.api.schema import error_responses, list_responses
from portal.errors import NotFound


class BalanceView(APIView):
    actions = {"GET": Action.BILLING_VIEW}

    @extend_schema(
        operation_id="balance_retrieve",
        responses={200: serializers.BalanceSerializer, **error_responses(401, 403)},
    )
    def get(self, request):
        organization = request.actor.organization
        state = spend.spend_state(organization)
        account = services.account_for(organization)
        body = {
            "currency": account.currency,
            "balance": state.balance,
            "ledger_balance": account.balance,
            "burn_per_hour": state.per_hour,
            "hours_left": None if state.hours_left is None else round(state.hours_left, 2),
            "month_to_date": state.month_to_date,
            "monthly_spend_limit": state.limit,
            "limit_reached": state.limit_reached,
            "invoice_overdue": state.overdue,
            "billing_mode": organization.billing_mode,
        }
        return Response(serializers.BalanceSerializer(body).data)


class LedgerFilter(django_filters.FilterSet):
    kind = django_filters.CharFilter()
    created_after = BoundedDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = BoundedDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = LedgerEntry
        fields = ["kind", "created_after", "created_before"]


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.LedgerEntrySerializer)))
class LedgerView(generics.ListAPIView):
    actions = {"GET": Action.BILLING_VIEW}
    serializer_class = serializers.LedgerEntrySerializer
    filterset_class = LedgerFilter
    queryset = LedgerEntry.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return ledger_selectors.ledger_entries(self.request.actor.organization)


class InvoiceFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=InvoiceStatus.choices)
    kind = django_filters.ChoiceFilter(choices=InvoiceKind.choices)
    period_start = django_filters.DateFilter()

    class Meta:
        model = Invoice
        fields = ["status", "kind", "period_start"]


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.InvoiceSerializer)))
class InvoiceListView(generics.ListAPIView):
    actions = {"GET": Action.BILLING_VIEW}
    serializer_class = serializers.InvoiceSerializer
    filterset_class = InvoiceFilter
    queryset = Invoice.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return invoice_selectors.invoices(self.request.actor.organization).select_related(
            "corrects"
        )


def _invoice(request, pk: int) -> Invoice:
    invoice = (
        invoice_selectors.invoices(request.actor.organization)
        .select_related("corrects")
        .filter(pk=pk)
        .first()
    )
    if invoice is None:
        raise NotFound("No such invoice in this organisation.")
    return invoice


class InvoiceDetailView(APIView):
    actions = {"GET": Action.BILLING_VIEW}

    @extend_schema(
        operation_id="invoices_retrieve",
        responses={200: serializers.InvoiceDetailSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request, pk: int):
        return Response(serializers.InvoiceDetailSerializer(_invoice(request, pk)).data)


class PdfOrJsonError(BaseContentNegotiation):
    """The PDF download answers the PDF, or an error in JSON, whatever ``Accept`` says: a
    client asking for ``application/pdf`` must not get a 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class InvoicePdfView(APIView):
    actions = {"GET": Action.BILLING_VIEW}
    renderer_classes = [JSONRenderer]  # for errors; the PDF is returned as it is
    content_negotiation_class = PdfOrJsonError

    @extend_schema(
        operation_id="invoices_pdf",
        responses={
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY, description="The PDF."),
            **{
                status: response
                for status, response in error_responses(403, 404).items()
                if status != 406  # never: see PdfOrJsonError
            },
        },
    )
    def get(self, request, pk: int):
        from billing.invoicing.documents import invoice_pdf

        invoice = _invoice(request, pk)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = (
            f'attachment; filename="{invoice_selectors.invoice_filename(invoice)}"'
        )
        return response
