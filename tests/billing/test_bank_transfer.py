"""Corporate bank transfers (对公转账): the payment reference, customer notices with private
slips, finance's received lines (by hand and from statement CSVs), matching once, and the API."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Sum
from django.test import Client

from billing.ledger import services as ledger
from billing.models import (
    BankLine,
    BankTransferNotice,
    LedgerEntry,
    LineStatus,
    NoticeStatus,
    Payment,
    PaymentReference,
)
from billing.transfers import reference as refs
from billing.transfers import services as transfers
from portal.accounts.models import AuditEvent
from portal.accounts.types import Actor
from portal.errors import PortalError
from tests import factories
from tests.concurrency import at_once

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
HEADER = "value_date,amount,currency,payer_name,payer_account,remark,bank_transaction_id\n"


@pytest.fixture(autouse=True)
def _slips_in_tmp(settings, tmp_path):
    settings.BANK_TRANSFER_SLIP_DIR = tmp_path / "slips"


def matcher(**extra):
    user = factories.user(is_staff=True, **extra)
    user.user_permissions.add(Permission.objects.get(codename="match_bank_transfer"))
    return user


def cny_org(**extra):
    return factories.organization(currency="CNY", country="CN", credit_amount=None, **extra)


def slip(content=PDF, name="slip.pdf"):
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def notice(org, amount="5000.00", **extra):
    owner = factories.member(org, "owner")
    return transfers.notice_create(
        actor=factories.actor(org, owner),
        amount=amount,
        sent_on=extra.pop("sent_on", "2025-11-30"),
        payer_name=extra.pop("payer_name", "北京某某科技有限公司"),
        slip=extra.pop("slip", slip()),
        **extra,
    )


def line(user, amount="5000.00", currency="CNY", remark="", bank_reference="", **extra):
    return transfers.bank_line_create(
        user=user,
        value_date="2026-12-01",
        amount=amount,
        currency=currency,
        payer_name="北京某某科技有限公司",
        payer_account="1100 2233 4455",
        remark=remark,
        bank_reference=bank_reference,
        **extra,
    )


def credits(org) -> Decimal:
    return LedgerEntry.objects.filter(account__organization=org, amount__gt=0).aggregate(
        total=Sum("amount")
    )["total"] or Decimal(0)


# --- the payment reference ------------------------------------------------------------------


def test_reference_format_and_check_character():
    for _ in range(200):
        code = refs.reference_generate()
        assert len(code) == 10 and code.startswith("GC")
        assert set(code[2:]) <= set(refs.ALPHABET)
        assert refs.reference_valid(code)
        assert refs.reference_valid(f" {code[:5].lower()}-{code[5:]} ")  # as people type it
    assert not set("01ILO") & set(refs.ALPHABET)
    code = "GC" + "7K3MQ9P" + refs.check_character("7K3MQ9P")
    assert refs.reference_valid(code)
    # any one character mistyped is detected
    for position in range(2, len(code)):
        for symbol in refs.ALPHABET:
            if symbol != code[position]:
                typo = code[:position] + symbol + code[position + 1 :]
                assert not refs.reference_valid(typo), typo
    # and any two neighbours swapped
    for position in range(2, len(code) - 1):
        a, b = code[position], code[position + 1]
        if a != b:
            swapped = code[:position] + b + a + code[position + 2 :]
            assert not refs.reference_valid(swapped), swapped
    assert not refs.reference_valid("GC123")
    assert not refs.reference_valid("XX" + code[2:])


def test_reference_is_made_once_and_stable(org):
    first = transfers.reference_for(org)
    assert transfers.reference_for(org).code == first.code
    assert PaymentReference.objects.filter(organization=org).count() == 1
    other = transfers.reference_for(factories.organization())
    assert other.code != first.code


def test_references_are_found_in_remarks(org):
    code = transfers.reference_for(org).code
    spaced = f"{code[:4]} {code[4:]}"
    assert refs.references_in(f"货款 付款 {spaced.lower()} 谢谢") == [code]
    assert transfers.suggest_organization(f"payment {code}") == org
    broken = code[:-1] + ("2" if code[-1] != "2" else "3")
    assert transfers.suggest_organization(f"payment {broken}") is None
    assert transfers.suggest_organization("") is None


# --- notices and slips ----------------------------------------------------------------------


@pytest.mark.parametrize(("content", "name"), [(PDF, "a.pdf"), (PNG, "a.PNG"), (JPEG, "a.jpeg")])
def test_a_notice_keeps_its_slip_privately(settings, content, name):
    org = cny_org()
    made = notice(org, slip=slip(content, name))
    assert made.status == NoticeStatus.PENDING and made.currency == "CNY"
    assert made.reference == transfers.reference_for(org).code
    stored = settings.BANK_TRANSFER_SLIP_DIR / made.slip_path
    assert stored.read_bytes() == content
    assert not str(stored).startswith(str(settings.STATIC_ROOT))
    assert AuditEvent.objects.filter(action="bank_transfer.notice", organization=org).exists()


def test_a_png_renamed_pdf_is_refused():
    org = cny_org()
    with pytest.raises(PortalError) as caught:
        notice(org, slip=slip(PNG, "slip.pdf"))
    assert caught.value.code == "slip_type_invalid"
    with pytest.raises(PortalError) as caught:
        notice(org, slip=slip(b"MZ\x90\x00 not a slip", "slip.pdf"))
    assert caught.value.code == "slip_type_invalid"
    assert not BankTransferNotice.objects.exists()


def test_an_oversized_slip_is_refused(settings):
    settings.BANK_TRANSFER_SLIP_MAX_BYTES = 1024
    org = cny_org()
    with pytest.raises(PortalError) as caught:
        notice(org, slip=slip(PDF + b"0" * 1024))
    assert caught.value.code == "slip_too_large"
    assert not BankTransferNotice.objects.exists()
    assert not list((settings.BANK_TRANSFER_SLIP_DIR).rglob("*.pdf"))


def test_a_notice_in_another_currency_or_by_a_viewer_is_refused():
    org = cny_org()
    with pytest.raises(PortalError) as caught:
        notice(org, currency="USD")
    assert caught.value.code == "bank_transfer_currency_mismatch"
    viewer = factories.member(org, "viewer")
    with pytest.raises(PortalError) as caught:
        transfers.notice_create(
            actor=factories.actor(org, viewer),
            amount="1",
            sent_on="2025-11-30",
            payer_name="x",
            slip=slip(),
        )
    assert caught.value.code == "permission_denied"


def test_slip_download_is_private_to_the_organisation():
    org = cny_org()
    made = notice(org, slip=slip(PNG, "回单.png"))
    url = f"/billing/bank-transfer/notices/{made.pk}/slip/"
    client = Client()
    client.force_login(factories.member(org, "billing"))
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"].startswith("attachment;")
    assert b"".join(response.streaming_content) == PNG

    stranger = Client()
    stranger.force_login(factories.member(cny_org(), "owner"))
    assert stranger.get(url).status_code == 404
    viewer = Client()
    viewer.force_login(factories.member(org, "viewer"))
    assert viewer.get(url).status_code == 403
    assert Client().get(url).status_code == 302  # signed out: the login page

    staff = Client()
    staff.force_login(factories.user(is_staff=True))  # staff without the permission
    assert staff.get(f"/finance/bank-transfers/notices/{made.pk}/slip/").status_code == 403
    staff.force_login(matcher())
    response = staff.get(f"/finance/bank-transfers/notices/{made.pk}/slip/")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"


# --- statement import -----------------------------------------------------------------------


def test_csv_import_creates_lines_and_suggests_by_reference():
    org = cny_org()
    code = transfers.reference_for(org).code
    user = matcher()
    csv = (
        HEADER
        + f"2026-12-01,5000.00,CNY,北京某某科技有限公司,6222 0000 1111,货款 {code},TX-1\n"
        + "2026-12-02,120.50,CNY,Somebody,,no reference,TX-2\n"
    )
    report = transfers.statement_import(user=user, content=csv.encode())
    assert [line.bank_reference for line in report.created] == ["TX-1", "TX-2"]
    first, second = BankLine.objects.order_by("bank_reference")
    assert first.suggested_organization == org and first.amount == Decimal("5000.00")
    assert second.suggested_organization is None
    assert first.status == second.status == LineStatus.UNMATCHED


def test_csv_import_with_an_invalid_row_writes_nothing():
    user = matcher()
    csv = (
        HEADER
        + "2026-12-01,5000.00,CNY,Payer,,ok,TX-1\n"
        + "2026-13-01,-5,EUR,,,bad,TX-2\n"
        + "2026-12-03,1.001,CNY,Payer,,too precise,\n"
    )
    with pytest.raises(PortalError) as caught:
        transfers.statement_import(user=user, content=csv)
    assert caught.value.code == "bank_statement_invalid"
    rows = caught.value.details["rows"]
    assert [row["row"] for row in rows] == [3, 4]
    assert set(rows[0]["errors"]) == {"value_date", "currency", "payer_name"}
    assert set(rows[1]["errors"]) == {"amount", "bank_transaction_id"}
    assert not BankLine.objects.exists()


def test_csv_import_refuses_missing_columns():
    with pytest.raises(PortalError) as caught:
        transfers.statement_import(user=matcher(), content="value_date,amount\n2026-12-01,5\n")
    assert caught.value.code == "bank_statement_invalid"
    assert "currency" in caught.value.details["columns"]


def test_csv_import_skips_lines_already_recorded():
    user = matcher()
    csv = HEADER + "2026-12-01,5000.00,CNY,Payer,,a,TX-1\n2026-12-01,10.00,CNY,Payer,,b,TX-2\n"
    transfers.statement_import(user=user, content=csv)
    again = transfers.statement_import(
        user=user, content=csv + "2026-12-02,7.00,CNY,Payer,,c,TX-3\n"
    )
    assert again.skipped == ["TX-1", "TX-2"]
    assert [line.bank_reference for line in again.created] == ["TX-3"]
    assert BankLine.objects.count() == 3


def test_only_finance_imports_and_enters_lines():
    with pytest.raises(PortalError) as caught:
        line(factories.user(is_staff=True))
    assert caught.value.code == "finance_only"
    assert not BankLine.objects.exists()


# --- matching -------------------------------------------------------------------------------


def test_match_posts_the_credit_exactly_once():
    org = cny_org()
    sent = notice(org)
    user = matcher()
    received = line(user, remark=f"货款 {transfers.reference_for(org).code}", bank_reference="B1")
    assert received.suggested_organization == org
    transfers.bank_line_match(user=user, line_id=received.pk, organization=org, notice_id=sent.pk)
    received.refresh_from_db()
    sent.refresh_from_db()
    assert received.status == LineStatus.MATCHED and received.organization == org
    assert sent.status == NoticeStatus.MATCHED
    entry = LedgerEntry.objects.get(idempotency_key=f"bank:{received.pk}")
    assert (entry.amount, entry.currency, entry.kind) == (Decimal("5000"), "CNY", "top_up")
    payment = Payment.objects.get(organization=org)
    assert (payment.purpose, payment.status, payment.amount) == (
        "bank_transfer",
        "succeeded",
        Decimal("5000.00"),
    )
    assert entry.payment == payment
    assert ledger.account_for(org).balance == Decimal("5000")
    event = AuditEvent.objects.get(action="bank_transfer.match")
    assert event.actor_user == user and event.details["staff"] == user.email

    with pytest.raises(PortalError) as caught:
        transfers.bank_line_match(user=user, line_id=received.pk, organization=org)
    assert caught.value.code == "bank_line_decided"
    assert credits(org) == Decimal("5000")


def test_mismatched_currency_and_amount_are_refused():
    user = matcher()
    usd = factories.organization(credit_amount=None)  # pays in USD
    cny_line = line(user)
    with pytest.raises(PortalError) as caught:
        transfers.bank_line_match(user=user, line_id=cny_line.pk, organization=usd)
    assert caught.value.code == "bank_transfer_currency_mismatch"

    org = cny_org()
    sent = notice(org, amount="4999.99")
    with pytest.raises(PortalError) as caught:
        transfers.bank_line_match(
            user=user, line_id=cny_line.pk, organization=org, notice_id=sent.pk
        )
    assert caught.value.code == "bank_transfer_amount_mismatch"
    cny_line.refresh_from_db()
    assert cny_line.status == LineStatus.UNMATCHED
    assert not Payment.objects.exists() and credits(org) == 0 and credits(usd) == 0


def test_unmatched_lines_stay_listed_and_can_be_returned():
    user = matcher()
    kept, returned = line(user, bank_reference="K"), line(user, bank_reference="R")
    transfers.bank_line_return(user=user, line_id=returned.pk, reason="No such customer")
    assert list(transfers.lines_unmatched()) == [kept]
    returned.refresh_from_db()
    assert returned.status == LineStatus.RETURNED and returned.return_reason == "No such customer"
    with pytest.raises(PortalError) as caught:
        transfers.bank_line_match(user=user, line_id=returned.pk, organization=cny_org())
    assert caught.value.code == "bank_line_decided"
    with pytest.raises(PortalError) as caught:
        transfers.bank_line_return(user=user, line_id=kept.pk, reason=" ")
    assert caught.value.code == "reason_required"


def test_a_rejected_notice_shows_its_reason_to_the_customer():
    org = cny_org()
    sent = notice(org)
    transfers.notice_reject(user=matcher(), notice_id=sent.pk, reason="Nothing arrived")
    client = Client()
    client.force_login(factories.member(org, "billing"))
    html = client.get("/billing/bank-transfer/").content.decode()
    assert "Rejected" in html and "Nothing arrived" in html


@pytest.mark.django_db(transaction=True)
def test_two_finance_tabs_matching_the_same_line_post_once(require_postgres):
    org = cny_org()
    user = matcher()
    received = line(user, bank_reference="RACE")
    outcomes = at_once(
        2,
        lambda i: transfers.bank_line_match(user=user, line_id=received.pk, organization=org),
    )
    assert sorted(outcomes) == ["bank_line_decided", "ok"], outcomes
    assert LedgerEntry.objects.filter(account__organization=org).count() == 1
    assert Payment.objects.filter(organization=org).count() == 1
    assert ledger.account_for(org).balance == Decimal("5000")


# --- pages ------------------------------------------------------------------------------------


def test_billing_page_shows_the_reference_and_bank_account(settings):
    settings.BANK_TRANSFER_ACCOUNT = {
        "payee": "某某算力中心有限公司",
        "bank": "中国工商银行",
        "branch": "北京海淀支行",
        "account": "0200 1111 2222 333",
    }
    org = cny_org()
    client = Client()
    client.force_login(factories.member(org, "owner"))
    html = client.get("/billing/").content.decode()
    code = transfers.reference_for(org).code
    assert code in html and "0200 1111 2222 333" in html and "附言" in html
    page = client.get("/billing/bank-transfer/")
    assert page.status_code == 200 and code in page.content.decode()


def test_customer_sends_a_notice_on_the_page():
    org = cny_org()
    client = Client()
    client.force_login(factories.member(org, "billing"))
    response = client.post(
        "/billing/bank-transfer/",
        {"amount": "800", "sent_on": "2025-11-30", "payer_name": "Payer", "slip": slip()},
    )
    assert response.status_code == 302
    assert BankTransferNotice.objects.get(organization=org).amount == Decimal("800.00")
    bad = client.post(
        "/billing/bank-transfer/",
        {"amount": "800", "sent_on": "2025-11-30", "payer_name": "P", "slip": slip(PNG)},
    )
    assert bad.status_code == 422
    assert "PDF, PNG or JPEG" in bad.content.decode()
    assert BankTransferNotice.objects.count() == 1


def test_finance_page_lists_imports_and_matches():
    org = cny_org()
    code = transfers.reference_for(org).code
    sent = notice(org)
    client = Client()
    client.force_login(factories.user(is_staff=True))
    assert client.get("/finance/bank-transfers/").status_code == 403
    client.force_login(matcher())
    csv = HEADER + f"2026-12-01,5000.00,CNY,Payer,,{code},TX-9\n"
    response = client.post(
        "/finance/bank-transfers/import/",
        {"statement": SimpleUploadedFile("s.csv", csv.encode(), content_type="text/csv")},
    )
    assert response.status_code == 302
    page = client.get("/finance/bank-transfers/")
    html = page.content.decode()
    assert page.status_code == 200 and "TX-9" in html and org.name in html
    received = BankLine.objects.get(bank_reference="TX-9")
    assert page.context["lines"][0].suggested_notice == sent
    bad = client.post(
        "/finance/bank-transfers/import/",
        {"statement": SimpleUploadedFile("s.csv", (HEADER + "x,y,z,,,,\n").encode())},
    )
    assert bad.status_code == 422 and "Row 2" in bad.content.decode()
    response = client.post(
        f"/finance/bank-transfers/lines/{received.pk}/match/",
        {"organization": org.slug, "notice": sent.pk},
    )
    assert response.status_code == 302
    assert credits(org) == Decimal("5000")
    manual = client.post(
        "/finance/bank-transfers/lines/",
        {"value_date": "2026-12-02", "amount": "1", "currency": "CNY", "payer_name": "X"},
    )
    assert manual.status_code == 302 and BankLine.objects.count() == 2


def test_finance_index_links_to_bank_transfers():
    client = Client()
    user = matcher()
    user.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    client.force_login(user)
    assert 'href="/finance/bank-transfers/"' in client.get("/finance/").content.decode()


# --- API --------------------------------------------------------------------------------------


def test_api_round_trip(key_client):
    client = key_client("billing")
    reference = client.get("/api/v1/bank-transfers/reference")
    assert reference.status_code == 200
    body = reference.json()
    assert refs.reference_valid(body["reference"]) and body["currency"] == "USD"
    assert body["account"]
    created = client.post(
        "/api/v1/bank-transfers",
        {
            "amount": "250.00",
            "sent_on": "2025-11-30",
            "payer_name": "ACME GmbH",
            "slip": slip(JPEG, "slip.jpg"),
        },
        format="multipart",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["status"] == "pending"
    assert created.json()["reference"] == body["reference"]
    listed = client.get("/api/v1/bank-transfers").json()
    assert [row["id"] for row in listed["results"]] == [created.json()["id"]]
    refused = client.post(
        "/api/v1/bank-transfers",
        {"amount": "1", "sent_on": "2025-11-30", "payer_name": "x", "slip": slip(PNG)},
        format="multipart",
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "slip_type_invalid"
    viewer = key_client("viewer")
    assert viewer.get("/api/v1/bank-transfers").status_code == 403


def test_api_notices_are_scoped_to_the_organisation(key_client):
    other = cny_org()
    notice(other)
    assert key_client("owner").get("/api/v1/bank-transfers").json()["results"] == []


def test_a_matched_transfer_is_not_refunded_through_a_card_provider():
    from billing.payments.services import refund_create

    org = cny_org()
    user = matcher()
    received = line(user)
    transfers.bank_line_match(user=user, line_id=received.pk, organization=org)
    payment = Payment.objects.get(organization=org)
    operator = factories.user(is_staff=True, is_superuser=True)
    with pytest.raises(PortalError) as caught:
        refund_create(
            actor=Actor.for_operator(operator, org),
            payment_id=payment.pk,
            amount="1",
            reason="asked",
        )
    assert caught.value.code == "payment_not_refundable"
    assert credits(org) == Decimal("5000")


# --- admin and query counts -----------------------------------------------------------------


def test_admin_lists_and_matches_only_with_the_permission():
    org = cny_org()
    code = transfers.reference_for(org).code
    user = matcher()
    received = line(user, remark=code)
    notice(org)
    admin = factories.user(is_staff=True, is_superuser=False)
    for codename in ("view_bankline", "view_banktransfernotice"):
        admin.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(admin)
    assert client.get("/admin/billing/bankline/").status_code == 200
    assert client.get("/admin/billing/banktransfernotice/").status_code == 200
    refused = client.post(
        "/admin/billing/bankline/",
        {"action": "match_suggested", "_selected_action": [received.pk]},
    )
    assert refused.status_code in (200, 302)
    assert credits(org) == 0  # the action is not offered without the permission
    admin.user_permissions.add(Permission.objects.get(codename="match_bank_transfer"))
    client.force_login(admin)
    done = client.post(
        "/admin/billing/bankline/",
        {"action": "match_suggested", "_selected_action": [received.pk]},
    )
    assert done.status_code == 302
    assert credits(org) == Decimal("5000")


def test_finance_page_query_count_does_not_grow_with_lines(django_assert_max_num_queries):
    user = matcher()
    client = Client()
    client.force_login(user)

    def fill(count: int) -> None:
        for _ in range(count):
            org = cny_org()
            notice(org)
            line(user, remark=transfers.reference_for(org).code)
            decided = line(user)
            transfers.bank_line_match(user=user, line_id=decided.pk, organization=org)

    fill(1)
    with django_assert_max_num_queries(20) as one:
        assert client.get("/finance/bank-transfers/").status_code == 200
    fill(4)
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get("/finance/bank-transfers/").status_code == 200


def test_a_matched_transfer_reconciles_with_its_credit():
    from django.utils import timezone

    from billing.finance.exports import reconciliation_rows

    org = cny_org()
    user = matcher()
    received = line(user, bank_reference="B-REC")
    transfers.bank_line_match(user=user, line_id=received.pk, organization=org)
    today = timezone.now().date()
    rows = [row for row in reconciliation_rows(today, today) if row["currency"] == "CNY"]
    assert [(r["match"], r["provider"], r["provider_reference"], r["amount"]) for r in rows] == [
        ("matched", "bank_transfer", "B-REC", "5000.00")
    ]
