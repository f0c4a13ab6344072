from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from billing.models import CreditRequest, Invoice, InvoiceLine, LedgerEntry, SpendLimitMode


class BalanceSerializer(serializers.Serializer):
    currency = serializers.CharField()
    balance = serializers.DecimalField(
        max_digits=28,
        decimal_places=12,
        coerce_to_string=True,
        help_text=_("Ledger balance less usage not debited yet (up to this moment)."),
    )
    ledger_balance = serializers.DecimalField(max_digits=28, decimal_places=12)
    burn_per_hour = serializers.DecimalField(max_digits=28, decimal_places=12)
    hours_left = serializers.DecimalField(
        max_digits=20, decimal_places=2, allow_null=True, help_text=_("Null when nothing runs.")
    )
    month_to_date = serializers.DecimalField(max_digits=28, decimal_places=12)
    monthly_spend_limit = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
    spend_limit_mode = serializers.ChoiceField(choices=SpendLimitMode.choices)
    limit_reached = serializers.BooleanField()
    invoice_overdue = serializers.BooleanField()
    billing_mode = serializers.CharField()
    credit_limit = serializers.DecimalField(
        max_digits=18,
        decimal_places=2,
        allow_null=True,
        help_text=_("Invoiced monthly: the credit limit finance granted (null when prepaid)."),
    )
    exposure = serializers.DecimalField(
        max_digits=28,
        decimal_places=12,
        allow_null=True,
        help_text=_(
            "Invoiced monthly: unpaid invoices, usage not invoiced yet and the reserve "
            "window's burn; a launch beyond the credit limit is refused (null when prepaid)."
        ),
    )


class SpendLimitSerializer(serializers.Serializer):
    monthly_spend_limit = serializers.DecimalField(
        max_digits=18, decimal_places=2, allow_null=True, help_text=_("Null for no limit.")
    )
    mode = serializers.ChoiceField(
        choices=SpendLimitMode.choices,
        help_text=_(
            "alert: notices only; block: new launches and starts refused once reached; "
            "stop: running instances stopped too (disks and volumes kept)."
        ),
    )


class SpendLimitUpdateSerializer(serializers.Serializer):
    monthly_spend_limit = serializers.CharField(
        allow_null=True,
        max_length=30,
        allow_blank=True,
        help_text=_("An amount such as 500 or 499.90; null or empty for no limit."),
    )
    mode = serializers.ChoiceField(choices=SpendLimitMode.choices, required=False)


class CreditRequestSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditRequest
        fields = [
            "id",
            "status",
            "company_name",
            "registration_number",
            "address",
            "contact_name",
            "contact_email",
            "contact_phone",
            "expected_monthly_spend",
            "currency",
            "note",
            "created_at",
            "decided_at",
            "decision_note",
            "granted_limit",
            "granted_terms_days",
        ]


class CreditRequestCreateSerializer(serializers.Serializer):
    company_name = serializers.CharField(max_length=200)
    registration_number = serializers.CharField(max_length=64)
    address = serializers.CharField(max_length=500)
    contact_name = serializers.CharField(max_length=120)
    contact_email = serializers.EmailField()
    contact_phone = serializers.CharField(max_length=40, required=False, allow_blank=True)
    expected_monthly_spend = serializers.CharField(
        max_length=30, help_text=_("In the organisation's currency, e.g. 20000.")
    )
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True)


class LedgerEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = LedgerEntry
        fields = ["id", "kind", "amount", "currency", "description", "reference", "created_at"]


class InvoiceLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = [
            "position",
            "kind",
            "description",
            "quantity",
            "unit",
            "unit_price",
            "amount",
        ]


class InvoiceSerializer(serializers.ModelSerializer):
    corrects = serializers.SerializerMethodField()

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "kind",
            "status",
            "corrects",
            "period_start",
            "period_end",
            "currency",
            "subtotal",
            "tax_status",
            "tax_rate",
            "tax",
            "total",
            "credits_applied",
            "amount_due",
            "payment_reference",
            "issued_at",
            "due_at",
            "paid_at",
        ]

    def get_corrects(self, invoice) -> str | None:
        return invoice.corrects.number if invoice.corrects_id else None


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]


class TopUpCreateSerializer(serializers.Serializer):
    amount = serializers.CharField(
        max_length=30, help_text=_("In the organisation's currency, e.g. 100 or 99.50.")
    )
    method = serializers.CharField(
        max_length=20,
        required=False,
        default="card",
        help_text=_(
            "card (the card provider's hosted page), alipay or wechatpay (a QR code); "
            "payment_method_unavailable when the method is not offered for the currency."
        ),
    )


class PaymentSerializer(serializers.Serializer):
    """A top-up and how to pay it. Never carries keys: only what the customer's wallet scans."""

    id = serializers.IntegerField()
    status = serializers.CharField()
    purpose = serializers.CharField()
    method = serializers.CharField(help_text=_("card, alipay or wechatpay."))
    amount = serializers.DecimalField(max_digits=18, decimal_places=2)
    currency = serializers.CharField()
    reference = serializers.CharField(
        help_text=_("The portal's reference (wallets' out_trade_no).")
    )
    qr_code = serializers.CharField(
        allow_blank=True, help_text=_("Wallets: the text to draw as a QR code (empty for cards).")
    )
    pay_page_url = serializers.CharField(
        allow_blank=True, help_text=_("Wallets: the portal's page with the QR code.")
    )
    alipay_page_url = serializers.CharField(
        allow_blank=True, help_text=_("Alipay: pay on Alipay's page instead of scanning.")
    )
    checkout_url = serializers.CharField(
        allow_blank=True, help_text=_("Cards: the hosted checkout page (on creation only).")
    )
    failure_message = serializers.CharField(allow_blank=True)
    under_review = serializers.BooleanField(
        help_text=_("The wallet reported a mismatching payment; nothing was credited.")
    )
    created_at = serializers.DateTimeField()
    succeeded_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
