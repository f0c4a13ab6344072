"""What the rest of billing does when money arrives.

Payments sit below invoicing and the spend controls (both of which call payments: to charge an
invoice, to auto-recharge), so payments do not import them back: they announce a paid invoice
and a credit through these hooks, which ``BillingConfig.ready()`` fills in (invoicing marks the
invoice paid; the spend controls stop the grace clock once the balance is positive again,
``billing.spend.services.credit_arrived``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from billing.models import Invoice
    from portal.accounts.models import Organization
    from portal.accounts.types import Actor


class InvoicePaid(Protocol):
    """Settles a finalized invoice that a payment paid in full."""

    def __call__(self, invoice: Invoice, *, reference: str, actor: Actor) -> object: ...


class CreditArrived(Protocol):
    """Reacts to credit added to an organisation's ledger by a payment."""

    def __call__(self, organization: Organization) -> object: ...


_invoice_paid: list[InvoicePaid] = []
_credit_arrived: list[CreditArrived] = []


def on_invoice_paid(listener: InvoicePaid) -> InvoicePaid:
    """Register the one function that settles a paid invoice (registering it again is a no-op)."""
    if listener not in _invoice_paid:
        _invoice_paid[:] = [listener]
    return listener


def on_credit_arrived(listener: CreditArrived) -> CreditArrived:
    if listener not in _credit_arrived:
        _credit_arrived.append(listener)
    return listener


def invoice_paid(invoice: Invoice, *, reference: str, actor: Actor) -> None:
    if not _invoice_paid:
        raise ImproperlyConfigured("No invoice settlement is registered (BillingConfig.ready).")
    for listener in _invoice_paid:
        listener(invoice, reference=reference, actor=actor)


def credit_arrived(organization: Organization) -> None:
    for listener in _credit_arrived:
        listener(organization)
