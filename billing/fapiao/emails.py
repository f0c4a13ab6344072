"""The email that tells a customer their fapiao is issued: to the address on the request and
the organisation's owners and billing members, each in their language, with the link to the
download page (the file itself is not attached: it is served to signed-in members only)."""

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from billing.models import FapiaoRequest
from portal.accounts.models import Membership
from portal.accounts.roles import Role
from portal.money import format_amount, with_currency


def recipients(request: FapiaoRequest) -> list[str]:
    members = (
        Membership.objects.filter(
            organization=request.organization_id,
            role__in=(Role.OWNER, Role.BILLING),
            user__is_active=True,
        )
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )
    seen, found = set(), []
    for address in [request.email or request.organization.billing_email, *members]:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            found.append(address)
    return found


def _message(request: FapiaoRequest) -> tuple[str, str]:
    url = settings.SITE_URL + reverse("billing:fapiao_request", args=[request.pk])
    subject = _("Your fapiao %(number)s is issued") % {"number": request.number}
    body = _(
        "Hello,\n\nThe tax authority has issued %(kind)s %(number)s of %(date)s for "
        "%(amount)s (tax included) to %(title)s.\n\nDownload it here: %(url)s\n\nThank you,\n"
        "%(seller)s\n"
    ) % {
        "kind": request.get_kind_display(),
        "number": request.number,
        "date": date_format(request.issued_on, "DATE_FORMAT"),
        "amount": with_currency(format_amount(request.amount, request.currency), "CNY"),
        "title": request.buyer_title,
        "url": url,
        "seller": settings.BANK_TRANSFER_ACCOUNT.get("payee", ""),
    }
    return subject, body


def issued_email_send(request_id: int) -> int:
    """Send the notice once (``notified_at``); returns how many messages went out."""
    from billing.invoicing.emails import recipient_languages

    with transaction.atomic():
        request = (
            FapiaoRequest.objects.select_for_update(of=("self",))
            .select_related("organization")
            .filter(pk=request_id, status="issued", notified_at__isnull=True)
            .first()
        )
        if request is None:
            return 0
        languages = recipient_languages(None, recipients(request))
        sent = 0
        for address, language in languages.items():
            with translation.override(language):
                subject, body = _message(request)
            EmailMessage(subject, body, to=[address]).send()
            sent += 1
        request.notified_at = timezone.now()
        request.save(update_fields=["notified_at"])
    return sent
