"""The emails accounts sends. They are rendered here and sent by a Celery task after commit."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _

from portal.background import enqueue_on_commit

if TYPE_CHECKING:
    from portal.accounts.models import Invitation, User


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    body: str


def send_later(email: Email) -> None:
    """Send after commit. If the broker is down, the write stands and the failure is logged."""
    from portal.accounts.tasks import send_email

    enqueue_on_commit(send_email, **asdict(email))


def language_of(user: "User | None") -> str:
    """The language an email to ``user`` is written in: their saved choice, else the one the
    request speaks (the page that sent it), else the portal's default."""
    if user is not None and user.language:
        return user.language
    return translation.get_language() or settings.LANGUAGE_CODE


def verification_email(*, user: "User", link: str) -> Email:
    with translation.override(language_of(user)):
        body = render_to_string("accounts/email/verify_email.txt", {"user": user, "link": link})
        return Email(to=user.email, subject=_("Confirm your email address"), body=body)


def invitation_email(*, invitation: "Invitation", link: str) -> Email:
    from portal.accounts.models import User

    invitee = User.objects.filter(email__iexact=invitation.email).first()
    with translation.override(language_of(invitee)):
        body = render_to_string(
            "accounts/email/invitation.txt", {"invitation": invitation, "link": link}
        )
        return Email(
            to=invitation.email,
            subject=_("You are invited to %(organization)s on GPU Cloud")
            % {"organization": invitation.organization.name},
            body=body,
        )
