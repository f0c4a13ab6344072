"""Billing API: balance, ledger and invoices; top-ups by card, Alipay or WeChat Pay."""

import django_filters
from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api import serializers
from billing.invoicing import selectors as invoice_selectors
from billing.ledger import selectors as ledger_selectors
from billing.ledger import services
from billing.models import (
    CreditRequest,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LedgerEntry,
    Payment,
)
from billing.payments import selectors as payment_selectors
from billing.payments import services as payments
from billing.payments import wallets
from billing.payments.services import profile_for
from billing.spend import credit_terms
from billing.spend import services as spend
from portal.accounts.roles import Action
from portal.api.filters import BoundedDateTimeFilter
from portal.api.schema import error_responses, list_responses
from portal.errors import NotFound


@extend_schema_view(
    get=extend_schema(summary="Prepaid balance, credit reserved and what is available")
)
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
        exposure = None
        if organization.billing_mode == "invoiced":
            exposure = credit_terms.exposure(organization)
        body = {
            "currency": account.currency,
            "balance": state.balance,
            "ledger_balance": account.balance,
            "burn_per_hour": state.per_hour,
            "hours_left": None if state.hours_left is None else round(state.hours_left, 2),
            "month_to_date": state.month_to_date,
            "monthly_spend_limit": state.limit,
            "spend_limit_mode": state.limit_mode,
            "limit_reached": state.limit_reached,
            "invoice_overdue": state.overdue,
            "billing_mode": organization.billing_mode,
            "credit_limit": exposure.limit if exposure else None,
            "exposure": exposure.total if exposure else None,
        }
        return Response(serializers.BalanceSerializer(body).data)


def _spend_limit_body(profile) -> dict:
    return serializers.SpendLimitSerializer(
        {"monthly_spend_limit": profile.monthly_spend_limit, "mode": profile.spend_limit_mode}
    ).data


class SpendLimitView(APIView):
    """The monthly spend limit and what reaching it does."""

    actions = {"GET": Action.BILLING_VIEW, "PUT": Action.BILLING_MANAGE}

    @extend_schema(
        operation_id="spend_limit_retrieve",
        summary="The monthly spend limit",
        responses={200: serializers.SpendLimitSerializer, **error_responses(401, 403)},
    )
    def get(self, request):
        return Response(_spend_limit_body(profile_for(request.actor.organization)))

    @extend_schema(
        operation_id="spend_limit_update",
        summary="Set or clear the monthly spend limit and its mode",
        request=serializers.SpendLimitUpdateSerializer,
        responses={
            200: serializers.SpendLimitSerializer,
            **error_responses(400, 401, 403, 415),
        },
    )
    def put(self, request):
        payload = serializers.SpendLimitUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        profile = spend.spend_limit_set(
            actor=request.actor,
            limit=payload.validated_data["monthly_spend_limit"],
            mode=payload.validated_data.get("mode"),
        )
        return Response(_spend_limit_body(profile))


@extend_schema_view(
    get=extend_schema(
        summary="Requests for monthly invoicing",
        responses=list_responses(serializers.CreditRequestSerializer),
    )
)
class CreditRequestListView(generics.ListAPIView):
    actions = {"GET": Action.BILLING_VIEW, "POST": Action.BILLING_MANAGE}
    serializer_class = serializers.CreditRequestSerializer
    queryset = CreditRequest.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return CreditRequest.objects.filter(organization=self.request.actor.organization)

    @extend_schema(
        operation_id="credit_requests_create",
        summary="Ask finance for monthly invoicing",
        request=serializers.CreditRequestCreateSerializer,
        responses={
            201: serializers.CreditRequestSerializer,
            **error_responses(400, 401, 403, 409, 415),
        },
    )
    def post(self, request):
        payload = serializers.CreditRequestCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        created = credit_terms.credit_request_create(actor=request.actor, **payload.validated_data)
        return Response(
            serializers.CreditRequestSerializer(created).data, status=status.HTTP_201_CREATED
        )


class LedgerFilter(django_filters.FilterSet):
    kind = django_filters.CharFilter()
    created_after = BoundedDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = BoundedDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = LedgerEntry
        fields = ["kind", "created_after", "created_before"]


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.LedgerEntrySerializer)))
@extend_schema_view(get=extend_schema(summary="The ledger: every credit and debit of the balance"))
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
@extend_schema_view(get=extend_schema(summary="The organisation's invoices and credit notes"))
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
        raise NotFound(_("No such invoice in this organisation."))
    return invoice


@extend_schema_view(get=extend_schema(summary="One invoice with its lines"))
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


@extend_schema_view(get=extend_schema(summary="An invoice as PDF (Factur-X)"))
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


# --- Top-ups: card (hosted checkout) or a wallet (QR code) -------------------------------


def _payment_body(payment, *, checkout_url: str = "") -> dict:
    is_wallet = wallets.is_wallet_payment(payment)
    return {
        "id": payment.pk,
        "status": payment.status,
        "purpose": payment.purpose,
        "method": payment.provider if is_wallet else wallets.CARD,
        "amount": payment.amount,
        "currency": payment.currency,
        "reference": payment.checkout_id,
        "qr_code": payment.qr_payload if is_wallet else "",
        "pay_page_url": settings.SITE_URL + reverse("billing:wallet_pay", args=[payment.pk])
        if is_wallet
        else "",
        "alipay_page_url": payment.pay_url if is_wallet else "",
        "checkout_url": checkout_url,
        "failure_message": payment.failure_message,
        "under_review": bool(payment.flag_reason),
        "created_at": payment.created_at,
        "succeeded_at": payment.succeeded_at,
        "expires_at": payment.expires_at,
    }


@extend_schema_view(post=extend_schema(summary="Top up credit by card, Alipay or WeChat Pay"))
class TopUpView(APIView):
    actions = {"POST": Action.BILLING_MANAGE}

    @extend_schema(
        operation_id="top_ups_create",
        request=serializers.TopUpCreateSerializer,
        responses={
            201: serializers.PaymentSerializer,
            **error_responses(400, 401, 403, 415),
        },
    )
    def post(self, request):

        payload = serializers.TopUpCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        organization = request.actor.organization
        method = wallets.method_check(data["method"], organization.currency)
        if method == wallets.CARD:
            target = payments.top_up_start(
                actor=request.actor,
                amount=data["amount"],
                success_url=settings.SITE_URL + reverse("billing:payments") + "?returned=1",
                cancel_url=settings.SITE_URL + reverse("billing:billing"),
            )
            payment = Payment.objects.get(organization=organization, checkout_id=target.checkout_id)
            body = _payment_body(payment, checkout_url=target.url)
        else:
            payment = wallets.wallet_top_up_start(
                actor=request.actor, amount=data["amount"], method=method
            )
            body = _payment_body(payment)
        return Response(serializers.PaymentSerializer(body).data, status=status.HTTP_201_CREATED)


@extend_schema_view(get=extend_schema(summary="One payment and its status"))
class PaymentDetailView(APIView):
    actions = {"GET": Action.BILLING_VIEW}

    @extend_schema(
        operation_id="payments_retrieve",
        responses={200: serializers.PaymentSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request, pk: int):

        payment = payment_selectors.payments(request.actor.organization).filter(pk=pk).first()
        if payment is None:
            raise NotFound(_("No such payment in this organisation."))
        payment = wallets.payment_refresh(payment)
        return Response(serializers.PaymentSerializer(_payment_body(payment)).data)
