"""Spend notices by email, to the billing email, owners and billing members (after commit)."""

from django.template.loader import render_to_string

from billing.models import AlertKind
from portal.accounts.emails import Email, send_later
from portal.accounts.models import Organization


def spend_notice_send(*, organization: Organization, kind: str, body: str) -> None:
    from billing.spend import billing_contacts

    subject = f"{AlertKind(kind).label} — {organization.name}"
    text = render_to_string(
        "billing/email/spend_notice.txt", {"organization": organization, "body": body}
    )
    for address in billing_contacts(organization):
        send_later(Email(to=address, subject=subject, body=text))
