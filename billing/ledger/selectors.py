"""Reads of the credits ledger, scoped to one organisation."""

from django.core.paginator import Page, Paginator
from django.db.models import BigIntegerField, Case, Count, F, Max, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate

from billing.models import EntryKind, Invoice, LedgerEntry, Payment


def ledger_entries(organization) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(account__organization=organization).order_by(
        "-created_at", "-id"
    )


def ledger_summary(organization) -> QuerySet:
    """The ledger as people read it: usage debits summed per day and per thing that used
    them (an instance's GPU time, its boot disk, a volume), every other entry on its own row.

    Rows are dicts: ``at`` (latest entry), ``day``, ``kind``, ``amount`` (summed at full
    precision), ``entries``, ``description`` and, for usage, ``meter``, ``subject_type``,
    ``subject_id``.
    """
    return (
        ledger_entries(organization)
        .annotate(
            day=TruncDate("created_at"),
            # usage rows of one day and subject share a group; any other entry is its own
            group=Case(
                When(kind=EntryKind.USAGE, then=Value(0)),
                default=F("id"),
                output_field=BigIntegerField(),
            ),
            meter=F("usage_record__meter__name"),
            subject_type=F("usage_record__subject_type"),
            subject_id=F("usage_record__subject_id"),
        )
        .values("day", "group", "kind", "meter", "subject_type", "subject_id")
        .annotate(
            total=Sum("amount"), entries=Count("id"), at=Max("created_at"), text=Max("description")
        )
        .order_by("-at", "-group")
    )


def ledger_page(organization, number, per_page: int = 25) -> Page:
    """One page of ``ledger_summary`` with each usage row named after its instance or volume."""
    from portal.metering.selectors import subject_names

    page = Paginator(ledger_summary(organization), per_page).get_page(number)
    rows = list(page.object_list)
    names = subject_names((row["subject_type"], row["subject_id"]) for row in rows)
    for row in rows:
        row["kind_label"] = EntryKind(row["kind"]).label
        row["name"] = names.get((row["subject_type"], row["subject_id"]), "")
    page.object_list = rows
    return page


def organization_money_records(organization) -> dict[str, int]:
    """The accounts hook fixing the currency (settings.ACCOUNTS_CURRENCY_LOCKS): ledger
    entries, payments and invoices are kept in it."""
    return {
        "ledger_entries": ledger_entries(organization).count(),
        "payments": Payment.objects.filter(organization=organization).count(),
        "invoices": Invoice.objects.filter(organization=organization).count(),
    }
