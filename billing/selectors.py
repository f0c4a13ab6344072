"""Reads of the ledger, scoped to one organisation."""

from django.db.models import QuerySet

from billing.models import LedgerEntry


def ledger_entries(organization) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(account__organization=organization).order_by(
        "-created_at", "-id"
    )
