"""Bank-transfer API: the payment reference with the centre's account, and the customer's
transfer notices (listed, and sent as multipart with the remittance slip)."""

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.models import BankTransferNotice, NoticeStatus
from billing.transfers import services as transfers
from portal.accounts.roles import Action
from portal.api.schema import error_responses, list_responses


class BankTransferReferenceSerializer(serializers.Serializer):
    reference = serializers.CharField(help_text=_("Put it in the transfer's remark (附言)."))
    currency = serializers.CharField(help_text=_("The organisation's currency: transfer in it."))
    payee = serializers.CharField()
    bank = serializers.CharField()
    branch = serializers.CharField()
    account = serializers.CharField(help_text=_("The centre's account number."))


class BankTransferNoticeSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=NoticeStatus.choices)

    class Meta:
        model = BankTransferNotice
        fields = [
            "id",
            "reference",
            "amount",
            "currency",
            "sent_on",
            "payer_name",
            "slip_name",
            "slip_content_type",
            "status",
            "reject_reason",
            "created_at",
            "decided_at",
        ]


class BankTransferNoticeCreateSerializer(serializers.Serializer):
    amount = serializers.CharField(max_length=30, help_text=_("e.g. 10000.00"))
    currency = serializers.CharField(
        max_length=3, required=False, help_text=_("The organisation's currency (the default).")
    )
    sent_on = serializers.CharField(max_length=10, help_text=_("YYYY-MM-DD"))
    payer_name = serializers.CharField(max_length=200)
    slip = serializers.FileField(help_text=_("The remittance slip: PDF, PNG or JPEG."))


class BankTransferReferenceView(APIView):
    actions = {"GET": Action.BILLING_VIEW}

    @extend_schema(
        operation_id="bank_transfer_reference",
        summary="The payment reference and the account to transfer to",
        responses={200: BankTransferReferenceSerializer, **error_responses(401, 403)},
    )
    def get(self, request):
        organization = request.actor.organization
        body = {
            "reference": transfers.reference_for(organization).code,
            "currency": organization.currency,
            **transfers.bank_account(),
        }
        return Response(BankTransferReferenceSerializer(body).data)


@extend_schema_view(
    get=extend_schema(
        summary="Bank transfer notices and their status",
        responses=list_responses(BankTransferNoticeSerializer),
    )
)
class BankTransferListView(generics.ListAPIView):
    actions = {"GET": Action.BILLING_VIEW, "POST": Action.BILLING_MANAGE}
    serializer_class = BankTransferNoticeSerializer
    queryset = BankTransferNotice.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return transfers.notices(self.request.actor.organization)

    @extend_schema(
        operation_id="bank_transfers_create",
        summary="Tell finance about a bank transfer sent, with its slip",
        request={"multipart/form-data": BankTransferNoticeCreateSerializer},
        responses={
            201: BankTransferNoticeSerializer,
            **error_responses(400, 401, 403, 415),
        },
    )
    def post(self, request):
        payload = BankTransferNoticeCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        notice = transfers.notice_create(
            actor=request.actor,
            amount=data["amount"],
            currency=data.get("currency"),
            sent_on=data["sent_on"],
            payer_name=data["payer_name"],
            slip=data["slip"],
        )
        return Response(BankTransferNoticeSerializer(notice).data, status=status.HTTP_201_CREATED)
