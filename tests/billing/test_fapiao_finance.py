"""The finance side of fapiao: the batch spreadsheet, recording what the tax authority issued
(20-digit number, date, amounts, a file checked by content), the customer's email and
download, the queue page and admin."""

import io
import zipfile
from decimal import Decimal

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from billing.errors import BillingErrorCode
from billing.fapiao import exports
from billing.fapiao import services as fapiao
from billing.models import FapiaoRequest
from portal.accounts.models import AuditEvent
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests.factories import billing as billing_factories
from tests.factories import fapiao as factories

D = Decimal
pytestmark = pytest.mark.django_db

NUMBER = "26112000000012345678"
PDF = b"%PDF-1.7\n% fapiao\n"


def ofd_bytes(with_root=True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("OFD.xml" if with_root else "other.xml", "<ofd:OFD/>")
    return buffer.getvalue()


def upload(content=PDF, name="fapiao.pdf"):
    return SimpleUploadedFile(name, content)


def issuer():
    user = billing_factories.finance_staff()
    user.user_permissions.add(Permission.objects.get(codename="issue_fapiao"))
    return type(user).objects.get(pk=user.pk)


@pytest.fixture
def requested(settings, tmp_path):
    settings.FAPIAO_FILE_DIR = tmp_path / "fapiao"
    settings.FAPIAO_MIN_AMOUNT = "100.00"
    world = factories.cny_world()
    factories.verify_enterprise(world.org)
    invoice = factories.paid_october(world, hours=10)
    request = fapiao.request_create(
        actor=world.actor(),
        kind="special",
        invoice_ids=[invoice.pk],
        buyer=fapiao.Buyer(
            title="北京算力科技有限公司",
            tax_id=factories.CREDIT_CODE,
            address="北京市海淀区中关村大街1号",
            phone="010-62345678",
            bank="中国工商银行北京海淀支行",
            account="0200004509001234567",
        ),
    )
    return world, invoice, request


def record(request, user, **overrides):
    fields = dict(
        number=NUMBER,
        issued_on=timezone.localdate(),
        net="235.85",
        tax="14.15",
        total="250.00",
        upload=upload(),
    )
    fields.update(overrides)
    return fapiao.request_record_issued(user=user, request_id=request.pk, **fields)


def test_the_batch_spreadsheet_has_one_row_per_line_and_marks_requests_exported(requested):
    _world, invoice, request = requested
    batch = fapiao.request_export(user=issuer())
    assert batch.count == 1 and batch.filename.endswith(".xlsx")
    sheet = openpyxl.load_workbook(io.BytesIO(batch.content)).active
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == tuple(header for header, _width in exports.COLUMNS)
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["发票流水号"] == f"FP{request.pk:08d}"
    assert row["发票类型"] == "数电票-增值税专用发票"
    assert row["购买方纳税人识别号"] == factories.CREDIT_CODE
    assert row["购买方银行账号"] == "0200004509001234567"
    assert row["商品和服务税收分类编码"] == "3040200000000000000"
    assert (D(str(row["金额"])), D(str(row["税额"])), D(str(row["价税合计"]))) == (
        D("235.85"),
        D("14.15"),
        D("250.00"),
    )
    assert invoice.number in row["备注"]
    assert len(rows) == 2
    request.refresh_from_db()
    assert request.status == "exported"
    assert AuditEvent.objects.filter(action="fapiao.export").count() == 1


def test_only_finance_staff_export_and_record(requested):
    world, _invoice, request = requested
    for user in (billing_factories.finance_staff(), world.owner):
        with pytest.raises(PermissionDenied):
            fapiao.request_export(user=user)
        with pytest.raises(PermissionDenied):
            record(request, user)


def test_recording_the_issued_fapiao_stores_its_file_and_emails_the_customer(
    requested, mailoutbox, django_capture_on_commit_callbacks
):
    world, _invoice, request = requested
    with django_capture_on_commit_callbacks(execute=True):
        issued = record(request, issuer())
    assert (issued.status, issued.number, issued.issued_total) == ("issued", NUMBER, D("250.00"))
    assert issued.file_content_type == "application/pdf"
    assert {message.to[0] for message in mailoutbox} >= {world.org.billing_email}
    assert NUMBER in mailoutbox[0].subject
    assert f"/billing/fapiao/{request.pk}/" in mailoutbox[0].body
    # a second run of the task sends nothing
    from billing.fapiao.emails import issued_email_send

    assert issued_email_send(request.pk) == 0
    client = Client()
    client.force_login(world.owner)
    response = client.get(f"/billing/fapiao/{request.pk}/file/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PDF
    assert response["Content-Type"] == "application/pdf"
    other = factories.cny_world()
    client.force_login(other.owner)
    assert client.get(f"/billing/fapiao/{request.pk}/file/").status_code == 404


@pytest.mark.parametrize(
    ("content", "name", "content_type"),
    [
        (ofd_bytes(), "fapiao.ofd", "application/ofd"),
        (
            b"<?xml version='1.0'?><EInvoice><Number>1</Number></EInvoice>",
            "f.xml",
            "application/xml",
        ),
    ],
)
def test_ofd_and_xml_files_are_accepted_by_content(requested, content, name, content_type):
    _world, _invoice, request = requested
    issued = record(request, issuer(), upload=upload(content, name))
    assert issued.file_content_type == content_type


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"\x89PNG\r\n\x1a\n....", "fapiao.pdf"),  # a PNG named .pdf
        (PDF, "fapiao.xml"),  # a PDF named .xml
        (ofd_bytes(with_root=False), "fapiao.ofd"),  # a ZIP without OFD.xml
        (b"<EInvoice><unclosed></EInvoice>", "fapiao.xml"),  # not XML
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "fapiao.xml"),  # entities refused
    ],
)
def test_files_that_are_not_what_they_claim_are_refused_and_nothing_is_written(
    requested, content, name, settings
):
    _world, _invoice, request = requested
    with pytest.raises(InvalidInput) as exc:
        record(request, issuer(), upload=upload(content, name))
    assert exc.value.code == BillingErrorCode.FAPIAO_FILE_INVALID
    request.refresh_from_db()
    assert request.status == "pending" and request.number is None
    assert (
        not list(settings.FAPIAO_FILE_DIR.rglob("*.*"))
        if settings.FAPIAO_FILE_DIR.exists()
        else True
    )


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"number": "2611200000001234567"}, "fapiao_number_invalid"),  # 19 digits
        ({"number": "2611200000001234567X"}, "fapiao_number_invalid"),
        ({"total": "249.99", "net": "235.84"}, "fapiao_amounts_mismatch"),
        ({"tax": "14.16"}, "fapiao_amounts_mismatch"),
        ({"issued_on": "2099-01-01"}, "invalid"),
        ({"total": "abc"}, "amount_invalid"),
    ],
)
def test_bad_numbers_dates_and_amounts_are_refused(requested, overrides, code, settings):
    _world, _invoice, request = requested
    with pytest.raises(InvalidInput) as exc:
        record(request, issuer(), **overrides)
    assert exc.value.code == code
    request.refresh_from_db()
    assert request.status == "pending"
    stored = (
        list(settings.FAPIAO_FILE_DIR.rglob("*.pdf")) if settings.FAPIAO_FILE_DIR.exists() else []
    )
    assert stored == []


def test_a_number_is_recorded_once_and_an_issued_request_is_not_issued_again(requested):
    _world, _invoice, request = requested
    user = issuer()
    record(request, user)
    with pytest.raises(Conflict) as exc:
        record(request, user, number="26112000000099999999")
    assert exc.value.code == BillingErrorCode.FAPIAO_NOT_OPEN


def test_the_finance_page_exports_and_records_with_errors_on_the_request(requested):
    world, _invoice, request = requested
    client = Client()
    client.force_login(issuer())
    page = client.get("/finance/fapiao/")
    assert page.status_code == 200
    assert f"FP{request.pk:08d}" in page.content.decode()
    export = client.post("/finance/fapiao/export/")
    assert export.status_code == 200
    assert export["Content-Type"].startswith("application/vnd.openxmlformats")
    bad = client.post(
        f"/finance/fapiao/{request.pk}/issue/",
        {
            "number": "123",
            "issued_on": timezone.localdate().isoformat(),
            "net": "235.85",
            "tax": "14.15",
            "total": "250.00",
            "file": upload(),
        },
    )
    assert bad.status_code == 422
    assert "20 digits" in bad.content.decode()
    good = client.post(
        f"/finance/fapiao/{request.pk}/issue/",
        {
            "number": NUMBER,
            "issued_on": timezone.localdate().isoformat(),
            "net": "235.85",
            "tax": "14.15",
            "total": "250.00",
            "file": upload(),
        },
    )
    assert good.status_code == 302
    assert FapiaoRequest.objects.get(pk=request.pk).number == NUMBER
    customer = Client()
    customer.force_login(world.owner)
    assert customer.get("/finance/fapiao/").status_code == 403


def test_admin_lists_requests_and_exports_the_selected(requested, admin_client):
    _world, _invoice, request = requested
    page = admin_client.get("/admin/billing/fapiaorequest/")
    assert page.status_code == 200
    response = admin_client.post(
        "/admin/billing/fapiaorequest/",
        {"action": "export_batch", "_selected_action": [str(request.pk)]},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.openxmlformats")
    assert admin_client.get(f"/admin/billing/fapiaorequest/{request.pk}/change/").status_code == 200
