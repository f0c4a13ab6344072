"""Template filters for invoice lines, written exactly as the invoice document writes them."""

from django import template

from billing.invoicing.documents import percent as document_percent
from billing.invoicing.documents import quantity as document_quantity

register = template.Library()


@register.filter
def quantity(line) -> str:
    """An invoice line's quantity with its unit, exactly as the PDF prints it: ``40 hours``,
    ``20.819635 GB-months``, ``1 hour``."""
    return document_quantity(line.quantity, line.unit)


@register.filter
def percent(rate) -> str:
    """A tax rate as the PDF prints it: ``0.0750`` → ``7.5``, ``0.19`` → ``19``."""
    return document_percent(rate) if rate not in (None, "") else ""


@register.filter
def invoice_kind(value) -> str:
    """A document kind's label in the active language: ``credit_note`` → ``Credit note``."""
    from billing.models import InvoiceKind

    return str(InvoiceKind(value).label) if value in InvoiceKind.values else value


@register.filter
def invoice_status(value) -> str:
    """An invoice status's label in the active language: ``finalized`` → ``Finalized``."""
    from billing.models import InvoiceStatus

    return str(InvoiceStatus(value).label) if value in InvoiceStatus.values else value
