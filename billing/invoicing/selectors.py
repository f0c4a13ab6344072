"""Reads of invoices and credit notes, scoped to one organisation."""

from django.db.models import QuerySet

from billing.models import Invoice


def invoices(organization, *, include_drafts: bool = True) -> QuerySet[Invoice]:
    """Invoices and credit notes, newest month first (drafts are the running month's)."""
    found = Invoice.objects.filter(organization=organization).defer("pdf")
    if not include_drafts:
        found = found.exclude(status="draft")
    return found.order_by("-period_start", "-kind", "-id")


def invoice_filename(invoice: Invoice) -> str:
    label = invoice.number or f"draft-{invoice.period_start:%Y-%m}"
    return f"{label}.pdf"
