"""Spend notices by email, to the billing email, owners and billing members (after commit)."""

from collections.abc import Callable

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation

from billing.models import AlertKind
from portal.accounts.emails import Email, send_later
from portal.accounts.models import Membership, Organization, Role


def spend_notice_send(
    *, organization: Organization, kind: str, body: str | Callable[[], str]
) -> None:
    """The notice to each contact in the contact's language (the one its user chose, else the
    default): ``body`` is a text, or makes it in the active language."""
    from billing.invoicing.emails import recipient_languages

    contacts = billing_contacts(organization)
    languages = recipient_languages(None, contacts)
    for address in contacts:
        with translation.override(languages[address]):
            subject = f"{AlertKind(kind).label} — {organization.name}"
            text = render_to_string(
                "billing/email/spend_notice.txt",
                {
                    "organization": organization,
                    "body": body() if callable(body) else body,
                    "billing_url": f"{settings.SITE_URL}{reverse('billing:billing')}",
                },
            )
        send_later(Email(to=address, subject=subject, body=text))


def billing_contacts(organization: Organization) -> list[str]:
    """Who hears about money: the billing email, owners and billing members."""
    emails = {organization.billing_email} if organization.billing_email else set()
    emails.update(
        Membership.objects.filter(
            organization=organization, role__in=[Role.OWNER, Role.BILLING]
        ).values_list("user__email", flat=True)
    )
    return sorted(e for e in emails if e)
