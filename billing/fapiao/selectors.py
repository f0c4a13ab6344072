"""What can be put on a fapiao, read from the invoices (see ``billing.fapiao`` for the rules).

For one invoice:

- **kept**: its total, plus the (negative) totals of its issued credit notes, minus what was
  refunded or is being refunded of the payments made for it;
- **covered**: what fapiao requests that are requested, exported or issued cover of it, minus
  the red-letter fapiao recorded against it;
- **invoiceable**: kept minus covered (never below zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Prefetch, Sum
from django.utils.translation import gettext as _

from billing.models import (
    COVERING_STATUSES,
    FapiaoCoverage,
    FapiaoRequest,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    RedLetterFapiao,
    Refund,
)
from portal.accounts.models import Organization
from portal.errors import NotFound

FAPIAO_CURRENCY = "CNY"
ZERO = Decimal("0.00")


@dataclass(frozen=True)
class Invoiceable:
    invoice: Invoice
    kept: Decimal
    covered: Decimal

    @property
    def amount(self) -> Decimal:
        return max(self.kept - self.covered, ZERO)


def _sums(queryset, key: str, field: str = "amount") -> dict[int, Decimal]:
    return {
        row[key]: row["total"] or ZERO
        for row in queryset.values(key).annotate(total=Sum(field)).order_by()
    }


def eligible_invoices(organization: Organization):
    """Paid invoices (not credit notes) in CNY: what was paid, from credits or by payment."""
    return Invoice.objects.filter(
        organization=organization,
        kind=InvoiceKind.INVOICE,
        status=InvoiceStatus.PAID,
        currency=FAPIAO_CURRENCY,
    ).order_by("period_start", "pk")


def invoiceable_for(invoices: list[Invoice]) -> list[Invoiceable]:
    """Kept and covered of each invoice, in five queries whatever their number."""
    ids = [invoice.pk for invoice in invoices]
    credited = _sums(
        Invoice.objects.filter(corrects_id__in=ids, kind=InvoiceKind.CREDIT_NOTE).exclude(
            status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID]
        ),
        "corrects_id",
        "total",
    )
    refunded = _sums(
        Refund.objects.filter(payment__invoice_id__in=ids, status__in=["pending", "succeeded"]),
        "payment__invoice_id",
    )
    covered = _sums(
        FapiaoCoverage.objects.filter(invoice_id__in=ids, request__status__in=COVERING_STATUSES),
        "invoice_id",
    )
    reversed_ = _sums(RedLetterFapiao.objects.filter(invoice_id__in=ids), "invoice_id")
    return [
        Invoiceable(
            invoice=invoice,
            kept=invoice.total + credited.get(invoice.pk, ZERO) - refunded.get(invoice.pk, ZERO),
            covered=covered.get(invoice.pk, ZERO) - reversed_.get(invoice.pk, ZERO),
        )
        for invoice in invoices
    ]


def invoiceable(organization: Organization) -> list[Invoiceable]:
    """The organisation's paid CNY invoices that still have something to put on a fapiao."""
    return [
        item for item in invoiceable_for(list(eligible_invoices(organization))) if item.amount > 0
    ]


def requests_of(organization: Organization):
    return (
        FapiaoRequest.objects.filter(organization=organization)
        .prefetch_related(
            Prefetch("covers", queryset=FapiaoCoverage.objects.select_related("invoice"))
        )
        .order_by("-created_at", "-id")
    )


def request_for(organization: Organization, pk: int) -> FapiaoRequest:
    """The organisation's request; another organisation's answers 404 like a missing one."""
    found = requests_of(organization).prefetch_related("lines", "red_letters").filter(pk=pk).first()
    if found is None:
        raise NotFound(_("No such fapiao request in this organisation."))
    return found
