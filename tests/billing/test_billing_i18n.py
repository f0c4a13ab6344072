"""Billing in the reader's language: the billing page, the invoice PDF (downloaded in the
request's language, emailed in each recipient's; the stored one in the default language) and
spend notices; the e-invoice XML stays English."""

import re
import subprocess

import pytest
from django.core import mail
from django.test import Client

from billing.finance import einvoice
from billing.invoicing import services as invoicing
from billing.invoicing.documents import invoice_pdf
from billing.spend.notices import spend_notice_send
from tests import factories
from tests.factories.billing import finance, issued

pytestmark = pytest.mark.django_db

CHINESE = re.compile(r"[\u4e00-\u9fff]")


def _text(pdf: bytes) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode()


def test_the_invoice_pdf_is_chinese_in_chinese_and_english_in_english(world):
    invoice = issued(world)
    english = _text(invoice_pdf(invoice, "en"))
    chinese = _text(invoice_pdf(invoice, "zh-hans"))
    assert not CHINESE.search(english), english
    assert "Amount due USD" in english and "Page 1 of 1" in english
    for words in ("账单", "应付金额（USD）", "付款方式", "第 1 页，共 1 页"):  # noqa: RUF001
        assert words in chinese, words
    assert invoice.number in chinese and f"{invoice.total:,}" in chinese
    # The stored PDF is the English one; Chinese is rendered on demand, never stored.
    assert invoice_pdf(invoice, "en") == bytes(invoice.pdf)
    invoice.refresh_from_db()
    assert not CHINESE.search(_text(bytes(invoice.pdf)))


def test_a_download_follows_the_language_of_the_request(world):
    invoice = issued(world)
    client = Client()
    client.force_login(factories.member(world.org, "billing"))
    url = f"/billing/invoices/{invoice.pk}/pdf/"
    chinese = client.get(url, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    english = client.get(url, HTTP_ACCEPT_LANGUAGE="en")
    assert chinese.status_code == english.status_code == 200
    assert "账单" in _text(chinese.content) and not CHINESE.search(_text(english.content))


def test_the_e_invoice_xml_stays_english_whatever_the_language(world):
    from django.utils import translation

    invoice = issued(world)
    with translation.override("en"):
        english = einvoice.invoice_ubl(invoice)
    with translation.override("zh-hans"):
        chinese = einvoice.invoice_ubl(invoice)
    assert english == chinese and not CHINESE.search(chinese.decode())


def test_an_invoice_email_is_in_each_recipients_language(world, django_capture_on_commit_callbacks):
    invoice = issued(world)
    reader = factories.member(world.org, "billing")
    reader.language = "zh-hans"
    reader.save(update_fields=["language"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        invoicing.invoice_resend(invoice, actor=finance(world.org))
    by_address = {m.to[0]: m for m in mail.outbox}
    chinese = by_address[reader.email]
    assert chinese.subject.startswith(f"账单 {invoice.number}")
    assert chinese.body.startswith("您好：") and "附件是" in chinese.body  # noqa: RUF001
    assert "账单" in _text(chinese.attachments[0][1])
    english = by_address[world.org.billing_email]
    assert english.subject.startswith(f"Invoice {invoice.number}")
    assert english.body.startswith("Hello,") and not CHINESE.search(english.body)
    assert english.attachments[0][1] == bytes(invoice.pdf)


def test_a_spend_notice_is_in_each_contacts_language(django_capture_on_commit_callbacks):
    org = factories.organization()
    owner = factories.member(org, "owner")
    owner.language = "zh-hans"
    owner.save(update_fields=["language"])
    with django_capture_on_commit_callbacks(execute=True):
        spend_notice_send(organization=org, kind="credit_limit", body="Body.")
    by_address = {m.to[0]: m for m in mail.outbox}
    assert by_address[owner.email].subject == f"已达到信用额度 — {org.name}"
    assert by_address[owner.email].body.startswith("您好：")  # noqa: RUF001
    assert by_address[org.billing_email].subject == f"Credit limit reached — {org.name}"


def test_the_billing_page_speaks_chinese_and_writes_cny_with_the_yuan_sign():
    org = factories.organization(currency="CNY", credit_amount="1234.5")
    client = Client()
    client.force_login(factories.member(org, "owner"))
    html = client.get("/billing/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert "当前余额" in html and "账本" in html
    assert "¥1234.50" in html and "1234.50 CNY" not in html
    english = client.get("/billing/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Balance now" in english and "¥1234.50" in english
