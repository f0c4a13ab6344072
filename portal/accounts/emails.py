"""The emails accounts sends. They are rendered here and sent by a Celery task after commit."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from django.template.loader import render_to_string

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


def verification_email(*, user: "User", link: str) -> Email:
    body = render_to_string("accounts/email/verify_email.txt", {"user": user, "link": link})
    return Email(to=user.email, subject="Confirm your email address", body=body)


def invitation_email(*, invitation: "Invitation", link: str) -> Email:
    body = render_to_string(
        "accounts/email/invitation.txt", {"invitation": invitation, "link": link}
    )
    return Email(
        to=invitation.email,
        subject=f"You are invited to {invitation.organization.name} on GPU Cloud",
        body=body,
    )
