from rest_framework import serializers

from billing.models import Invoice, InvoiceLine, LedgerEntry


class BalanceSerializer(serializers.Serializer):
    currency = serializers.CharField()
    balance = serializers.DecimalField(
        max_digits=28,
        decimal_places=12,
        coerce_to_string=True,
        help_text="Ledger balance less usage not debited yet (up to this moment).",
    )
    ledger_balance = serializers.DecimalField(max_digits=28, decimal_places=12)
    burn_per_hour = serializers.DecimalField(max_digits=28, decimal_places=12)
    hours_left = serializers.DecimalField(
        max_digits=20, decimal_places=2, allow_null=True, help_text="Null when nothing runs."
    )
    month_to_date = serializers.DecimalField(max_digits=28, decimal_places=12)
    monthly_spend_limit = serializers.DecimalField(max_digits=18, decimal_places=2, allow_null=True)
    limit_reached = serializers.BooleanField()
    invoice_overdue = serializers.BooleanField()
    billing_mode = serializers.CharField()


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
