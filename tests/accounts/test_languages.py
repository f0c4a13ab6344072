"""The account page chooses the language, and emails are written in the reader's language."""

import re

import pytest
from django.core import mail
from django.test import Client
from django.utils import translation

from portal.accounts import services
from tests import factories

pytestmark = pytest.mark.django_db
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def chinese(text: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(text)


def test_the_account_page_offers_the_switchers_languages_and_saves_the_choice():
    user = factories.user()
    client = Client()
    client.force_login(user)
    page = client.get("/account/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    select = re.search(r'<select name="language"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert re.findall(r'<option value="([^"]+)"', select) == ["en", "zh-hans"]
    assert re.search(r'<option value="en"[^>]*selected', select)  # what the page speaks now

    answer = client.post(
        "/account/", {"full_name": "Ada", "language": "zh-hans"}, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert answer.status_code == 302 and answer["Location"] == "/account/"
    user.refresh_from_db()
    assert (user.full_name, user.language) == ("Ada", "zh-hans")
    client.cookies.pop("portal_language", None)  # the saved choice, not the cookie, decides
    page = client.get("/account/", HTTP_ACCEPT_LANGUAGE="en")
    assert page["Content-Language"] == "zh-hans"
    html = page.content.decode()
    assert chinese("Profile saved.") in html and "Profile saved." not in html
    assert chinese("Your account") in html
    assert re.search(r'<option value="zh-hans"[^>]*selected', html)


def test_the_account_page_refuses_a_language_the_portal_does_not_speak():
    user = factories.user()
    client = Client()
    client.force_login(user)
    answer = client.post("/account/", {"full_name": "Ada", "language": "xx"})
    assert answer.status_code == 200  # the form again, with its error
    user.refresh_from_db()
    assert user.language == ""


def test_the_confirmation_email_speaks_the_readers_language(django_capture_on_commit_callbacks):
    user = factories.user("li@example.com")
    services.user_set_language(user=user, language="zh-hans")
    with translation.override("en"), django_capture_on_commit_callbacks(execute=True):
        services.user_send_verification(user=user)
    message = mail.outbox[-1]
    assert message.subject == chinese("Confirm your email address") != "Confirm your email address"
    assert chinese("Please confirm your email address for GPU Cloud by opening this link:") in (
        message.body
    )
    assert "Please confirm" not in message.body and CHINESE.search(message.body)


def test_an_invitation_to_a_chinese_speaking_user_is_in_chinese(
    org, owner, django_capture_on_commit_callbacks
):
    invited = factories.user("wang@example.com")
    services.user_set_language(user=invited, language="zh-hans")
    with translation.override("en"), django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            actor=factories.actor(org, owner), email=invited.email, role="viewer"
        )
    message = mail.outbox[-1]
    assert CHINESE.search(message.subject) and org.name in message.subject
    assert "invited you" not in message.body and "Accept the invitation" not in message.body
    assert chinese("Viewer") in message.body  # the role in Chinese too


def test_an_invitation_to_a_stranger_speaks_the_inviters_page_language(
    org, owner, django_capture_on_commit_callbacks
):
    with translation.override("en"), django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            actor=factories.actor(org, owner), email="new@example.com", role="viewer"
        )
    assert mail.outbox[-1].subject == f"You are invited to {org.name} on GPU Cloud"


def test_the_password_reset_email_speaks_the_readers_language_not_the_browsers():
    user = factories.user("zhao@example.com")
    services.user_set_language(user=user, language="zh-hans")
    Client().post("/password-reset/", {"email": "zhao@example.com"}, HTTP_ACCEPT_LANGUAGE="en")
    message = mail.outbox[-1]
    assert message.subject == chinese("Reset your GPU Cloud password")
    assert chinese("If it was not you, ignore this email; your password stays as it is.") in (
        message.body
    )
