"""Invoice emails: the PDF, attached, to the organisation's billing address and to its members
with the owner or billing role. Sent by a Celery task after commit (``send_invoice_later``), so
a rolled-back finalize sends nothing and a slow mail server never holds a transaction.

The month close issues its invoices without their PDFs: ``issue_documents_later`` hands them,
``PDF_CHUNK`` a task, to the workers after commit (several render at once), and each task
renders and stores every PDF (``documents.invoice_pdf_store``, once) then queues its email
(``issued_documents_send``). A PDF that fails to render is retried by the task, and served on
demand meanwhile; its email waits for it."""

import logging

from django.conf import settings
from django.core.mail import EmailMessage, mailers

from billing.models import Invoice, InvoiceKind
from portal.accounts.models import Membership
from portal.accounts.roles import Role
from portal.background import enqueue_on_commit

RECIPIENT_ROLES = (Role.OWNER, Role.BILLING)
PDF_CHUNK = 10  # invoices per rendering task: about 2 s of work, spread over the workers

logger = logging.getLogger(__name__)


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


def issue_documents_later(invoice_ids: list[int], *, notify: bool = True) -> None:
    """After commit, have workers render the issued documents' PDFs, ``PDF_CHUNK`` per task,
    and (``notify``) email each once its PDF is stored. If the broker is down, the documents
    stand and the failure is logged: each PDF is rendered on demand when first asked for, and
    finance can resend the email from admin."""
    from billing.invoicing.tasks import render_invoice_pdfs

    for first in range(0, len(invoice_ids), PDF_CHUNK):
        enqueue_on_commit(render_invoice_pdfs, invoice_ids[first : first + PDF_CHUNK], notify)


def issued_documents_send(invoice_ids: list[int], *, notify: bool = True) -> list[int]:
    """Render and store each issued document's PDF unless it is stored already, then
    (``notify``) queue its email. Returns the ids whose PDF failed to render (nothing is sent
    for them), for the task to retry; a missing or draft document is skipped."""
    from billing.invoicing.documents import invoice_pdf

    failed = []
    found = Invoice.objects.select_related("organization", "corrects").filter(pk__in=invoice_ids)
    for invoice in sorted(found, key=lambda document: document.pk):
        if not invoice.number:
            continue
        try:
            invoice_pdf(invoice)
        except Exception:
            logger.exception("the PDF of %s could not be rendered", invoice.number)
            failed.append(invoice.pk)
            continue
        if notify:
            send_invoice_later(invoice)
    return failed
