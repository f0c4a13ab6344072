"""Reads of billing data, scoped to one organisation."""

from django.core.paginator import Page, Paginator
from django.db.models import BigIntegerField, Case, Count, F, Max, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate

from billing.models import EntryKind, Invoice, LedgerEntry, Payment, PaymentMethod


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


def payment_methods(organization) -> QuerySet[PaymentMethod]:
    return PaymentMethod.objects.filter(organization=organization, removed_at__isnull=True)


def payments(organization) -> QuerySet[Payment]:
    return Payment.objects.filter(organization=organization).select_related("payment_method")


def invoices(organization, *, include_drafts: bool = True) -> QuerySet[Invoice]:
    """Invoices and credit notes, newest month first (drafts are the running month's)."""
    found = Invoice.objects.filter(organization=organization).defer("pdf")
    if not include_drafts:
        found = found.exclude(status="draft")
    return found.order_by("-period_start", "-kind", "-id")


def invoice_filename(invoice: Invoice) -> str:
    label = invoice.number or f"draft-{invoice.period_start:%Y-%m}"
    return f"{label}.pdf"
