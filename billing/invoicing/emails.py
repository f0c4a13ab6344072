"""Invoice emails: the PDF, attached, to the organisation's billing address and to its members
with the owner or billing role. Sent by a Celery task after commit (``send_invoice_later``), so
a rolled-back finalize sends nothing and a slow mail server never holds a transaction."""

from django.conf import settings
from django.core.mail import EmailMessage, mailers

from billing.models import Invoice, InvoiceKind
from portal.accounts.models import Membership
from portal.accounts.roles import Role
from portal.background import enqueue_on_commit

RECIPIENT_ROLES = (Role.OWNER, Role.BILLING)


def invoice_recipients(invoice: Invoice) -> list[str]:
    """The billing address, then owners' and billing members' addresses (each once)."""
    organization = invoice.organization
    members = (
        Membership.objects.filter(
            organization=organization, role__in=RECIPIENT_ROLES, user__is_active=True
        )
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )
    addresses = [organization.billing_email, *members]
    seen, recipients = set(), []
    for address in addresses:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            recipients.append(address)
    return recipients


def _body(invoice: Invoice) -> str:
    month = f"{invoice.period_start:%B %Y}"
    seller = (invoice.seller or settings.BILLING_SELLER).get("name", "")
    amount = f"{invoice.total} {invoice.currency}"
    if invoice.kind == InvoiceKind.CREDIT_NOTE:
        what = (
            f"Attached is credit note {invoice.number} of {amount}, correcting invoice "
            f"{invoice.corrects.number if invoice.corrects else ''} ({month})."
        )
    elif invoice.total == 0:
        what = (
            f"Attached is invoice {invoice.number} for {month}: {amount}. There is nothing to pay."
        )
    elif invoice.billing_mode == "prepaid":
        what = (
            f"Attached is invoice {invoice.number} for your usage in {month}: {amount}. "
            "It has been paid from your prepaid credits; there is nothing to pay."
        )
    else:
        due = f"{invoice.due_at:%d %B %Y}" if invoice.due_at else ""
        bank = (invoice.seller or {}).get("bank", "")
        what = (
            f"Attached is invoice {invoice.number} for your usage in {month}: {amount}, "
            f"due by {due}.\n\nPlease pay by bank transfer to {bank}, quoting the payment "
            f"reference {invoice.payment_reference}, or pay it with your saved card on the "
            "billing page."
        )
    return (
        f"Hello,\n\n{what}\n\nOrganisation: {invoice.organization.name} "
        f"({invoice.organization.slug})\n\nThank you,\n{seller}\n"
    )


def invoice_messages(invoice: Invoice) -> list[EmailMessage]:
    """One message per recipient (members do not see each other's addresses)."""
    from billing.invoicing.documents import invoice_pdf

    title = "Credit note" if invoice.kind == InvoiceKind.CREDIT_NOTE else "Invoice"
    subject = (
        f"{title} {invoice.number} ({invoice.period_start:%B %Y}), {invoice.organization.name}"
    )
    pdf = invoice_pdf(invoice)
    reply_to = (invoice.seller or {}).get("email")
    messages = []
    for address in invoice_recipients(invoice):
        message = EmailMessage(
            subject=subject,
            body=_body(invoice),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[address],
            reply_to=[reply_to] if reply_to else None,
        )
        message.attach(f"{invoice.number}.pdf", pdf, "application/pdf")
        messages.append(message)
    return messages


def invoice_email_send(invoice_id: int) -> int:
    """Send the issued document to its recipients now (the task calls this). Returns how
    many messages were sent; a draft is never sent."""
    invoice = Invoice.objects.select_related("organization", "corrects").get(pk=invoice_id)
    if not invoice.number:
        return 0
    messages = invoice_messages(invoice)
    with mailers.default as connection:  # one connection for all of them
        return connection.send_messages(messages) or 0


def send_invoice_later(invoice: Invoice) -> None:
    """Enqueue the email after commit. If the broker is down, the invoice stands and the
    failure is logged (finance can resend it from admin)."""
    from billing.invoicing.tasks import send_invoice_email

    enqueue_on_commit(send_invoice_email, invoice.pk)
