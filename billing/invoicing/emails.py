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
from django.utils import translation
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from billing.models import Invoice, InvoiceKind
from portal.accounts.models import Membership
from portal.accounts.roles import Role
from portal.background import enqueue_on_commit
from portal.money import format_amount, with_currency

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


def recipient_languages(invoice: Invoice | None, recipients: list[str]) -> dict[str, str]:
    """Each address's language: the one its user chose (``User.language``), else the default.
    The billing address reads the default language unless it is a user's who chose another."""
    from portal.accounts.models import User

    chosen = dict(
        User.objects.filter(email__in=recipients)
        .exclude(language="")
        .values_list("email", "language")
    )
    chosen = {email.lower(): language for email, language in chosen.items()}
    return {
        address: chosen.get(address.lower()) or settings.LANGUAGE_CODE for address in recipients
    }


def _body(invoice: Invoice) -> str:
    """The message, in the active language."""
    month = date_format(invoice.period_start, "YEAR_MONTH_FORMAT")
    seller = (invoice.seller or settings.BILLING_SELLER).get("name", "")
    amount = with_currency(format_amount(invoice.total, invoice.currency), invoice.currency)
    if invoice.kind == InvoiceKind.CREDIT_NOTE:
        what = _(
            "Attached is credit note %(number)s of %(amount)s, correcting invoice "
            "%(corrects)s (%(month)s)."
        ) % {
            "number": invoice.number,
            "amount": amount,
            "corrects": invoice.corrects.number if invoice.corrects else "",
            "month": month,
        }
    elif invoice.total == 0:
        what = _(
            "Attached is invoice %(number)s for %(month)s: %(amount)s. There is nothing to pay."
        ) % {"number": invoice.number, "month": month, "amount": amount}
    elif invoice.billing_mode == "prepaid":
        what = _(
            "Attached is invoice %(number)s for your usage in %(month)s: %(amount)s. "
            "It has been paid from your prepaid credits; there is nothing to pay."
        ) % {"number": invoice.number, "month": month, "amount": amount}
    else:
        due = date_format(invoice.due_at, "DATE_FORMAT") if invoice.due_at else ""
        bank = (invoice.seller or {}).get("bank", "")
        what = _(
            "Attached is invoice %(number)s for your usage in %(month)s: %(amount)s, "
            "due by %(due)s.\n\nPlease pay by bank transfer to %(bank)s, quoting the payment "
            "reference %(reference)s, or pay it with your saved card on the billing page."
        ) % {
            "number": invoice.number,
            "month": month,
            "amount": amount,
            "due": due,
            "bank": bank,
            "reference": invoice.payment_reference,
        }
    return _(
        "Hello,\n\n%(what)s\n\nOrganisation: %(organization)s (%(slug)s)\n\nThank you,\n%(seller)s\n"
    ) % {
        "what": what,
        "organization": invoice.organization.name,
        "slug": invoice.organization.slug,
        "seller": seller,
    }


def _subject(invoice: Invoice) -> str:
    values = {
        "number": invoice.number,
        "month": date_format(invoice.period_start, "YEAR_MONTH_FORMAT"),
        "organization": invoice.organization.name,
    }
    if invoice.kind == InvoiceKind.CREDIT_NOTE:
        return _("Credit note %(number)s (%(month)s), %(organization)s") % values
    return _("Invoice %(number)s (%(month)s), %(organization)s") % values


def invoice_messages(invoice: Invoice) -> list[EmailMessage]:
    """One message per recipient (members do not see each other's addresses), each in the
    recipient's language, its PDF too."""
    from billing.invoicing.documents import invoice_pdf

    reply_to = (invoice.seller or {}).get("email")
    recipients = invoice_recipients(invoice)
    languages = recipient_languages(invoice, recipients)
    pdfs: dict[str, bytes] = {}
    messages = []
    for address in recipients:
        language = languages[address]
        with translation.override(language):
            if language not in pdfs:
                pdfs[language] = invoice_pdf(invoice, language)
            message = EmailMessage(
                subject=_subject(invoice),
                body=_body(invoice),
                from_email=settings.DEFAULT_FROM_EMAIL,
                to=[address],
                reply_to=[reply_to] if reply_to else None,
            )
        message.attach(f"{invoice.number}.pdf", pdfs[language], "application/pdf")
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
