"""Reads of payments and saved cards, scoped to one organisation."""

from django.db.models import QuerySet

from billing.models import Payment, PaymentMethod


def payment_methods(organization) -> QuerySet[PaymentMethod]:
    return PaymentMethod.objects.filter(organization=organization, removed_at__isnull=True)


def payments(organization) -> QuerySet[Payment]:
    return Payment.objects.filter(organization=organization).select_related("payment_method")
