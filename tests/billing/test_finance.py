"""The finance area: who gets in, the register page with its filters, totals and ageing, and
period exports run as background jobs (Celery is eager in tests) and downloaded."""

import io
from datetime import UTC, date, datetime

import pytest
import time_machine
from openpyxl import load_workbook

from billing.finance import exports
from billing.finance import services as finance
from billing.finance.exports import JOURNAL_COLUMNS, LINE_COLUMNS, REGISTER_COLUMNS, RegisterFilter
from billing.models import ExportJob, ExportStatus
from tests import factories
from tests.factories.billing import finance_staff

pytestmark = pytest.mark.django_db

FINANCE = "/finance/"
OCT_NOV = {"start": "2026-10", "end": "2026-11"}
DECEMBER = datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.fixture
def staff_client(client):
    client.force_login(finance_staff())
    return client


# --- access -----------------------------------------------------------------------------------


def test_only_finance_staff_get_in(client):
    response = client.get(FINANCE)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")

    org = factories.organization()
    client.force_login(factories.member(org, "owner"))
    assert client.get(FINANCE).status_code == 403
    client.force_login(factories.user(is_staff=True))  # staff without the permission
    assert client.get(FINANCE).status_code == 403
    assert client.post("/finance/exports/", {"kind": "register"}).status_code == 403

    client.force_login(finance_staff())
    response = client.get(FINANCE)
    assert response.status_code == 200
    assert b'href="/finance/"' in response.content  # the staff nav link
    client.force_login(factories.user(is_staff=True, is_superuser=True))
    assert client.get(FINANCE).status_code == 200


# --- the register page ------------------------------------------------------------------------


def test_register_page_shows_totals_ageing_and_rows(
    month,
    staff_client,
    django_assert_max_num_queries,
):
    with time_machine.travel(DECEMBER, tick=False), django_assert_max_num_queries(12):
        response = staff_client.get(FINANCE, {"start": "2026-10", "end": "2026-10"})
    assert response.status_code == 200
    totals = response.context["totals"]
    assert [str(totals["USD"][k]) for k in exports.TOTAL_FIELDS] == [
        "32.00",
        "5.00",
        "37.00",
        "30.00",
        "7.00",
    ]
    assert str(totals["CNY"]["gross"]) == "131.71"
    # The late payer's 7.00 was due on 15 November: 16 days overdue on 1 December.
    assert {k: str(v) for k, v in response.context["ageing"]["USD"].items()} == {
        "0-30": "7.00",
        "31-60": "0",
        "61-90": "0",
        "90+": "0",
    }
    content = response.content.decode()
    for number in ("INV-2026-000001", "INV-2026-000002", "INV-2026-000003", "CN-2026-000001"):
        assert number in content
    assert "131.71" in content
    assert response.context["count"] == 4

    only_cny = staff_client.get(FINANCE, {"start": "2026-10", "currency": "cny"})
    assert [row["number"] for row in only_cny.context["page"]] == ["INV-2026-000003"]
    by_org = staff_client.get(
        FINANCE, {"start": "2026-10", "organization": month["orgs"]["late"].slug}
    )
    assert [row["number"] for row in by_org.context["page"]] == ["INV-2026-000002"]
    finalized = staff_client.get(FINANCE, {"start": "2026-10", "status": ["finalized"]})
    assert [row["number"] for row in finalized.context["page"]] == [
        "CN-2026-000001",
        "INV-2026-000002",
    ]
    with_drafts = staff_client.get(FINANCE, {"start": "2026-10", "include_drafts": "1"})
    assert with_drafts.context["count"] == 5
    assert "includes drafts" in with_drafts.content.decode()


def test_nothing_matching_shows_the_empty_state(staff_client):
    response = staff_client.get(FINANCE, {"start": "2030-01", "end": "2030-02"})
    assert response.status_code == 200
    assert "No invoices match this filter." in response.content.decode()


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ({"start": "2026-11", "end": "2026-10"}, "range_reversed", "before it starts"),
        ({"start": "2020-01", "end": "2026-10"}, "range_too_large", "at most 36 months"),
        ({"start": "October"}, "month_invalid", "must look like 2026-10"),
        ({"start": "2026-10", "status": ["bogus"]}, "status_invalid", "Unknown status bogus"),
        ({"start": "2026-10", "organization": "nobody"}, "organization_unknown", "nobody"),
    ],
)
def test_invalid_filters_say_why_with_422(staff_client, query, code, message):
    response = staff_client.get(FINANCE, query)
    assert response.status_code == 422
    assert response.context["error"].code == code
    assert message in response.context["error"].message
    assert message in response.content.decode()


# --- exports ----------------------------------------------------------------------------------


def _rows(kind):
    flt = RegisterFilter(date(2026, 10, 1), date(2026, 11, 1))
    if kind == "register":
        return exports.register_rows(flt), REGISTER_COLUMNS
    if kind == "lines":
        return exports.line_rows(flt), LINE_COLUMNS
    return exports.journal_rows(date(2026, 10, 1), date(2026, 11, 30)), JOURNAL_COLUMNS


@pytest.mark.parametrize("kind", ["register", "lines", "journal"])
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_an_export_runs_and_downloads_the_rows(
    month,
    staff_client,
    django_capture_on_commit_callbacks,
    kind,
    fmt,
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff_client.post("/finance/exports/", {**OCT_NOV, "kind": kind, "format": fmt})
    assert len(callbacks) == 1
    job = ExportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/finance/exports/{job.pk}/"
    assert (job.status, job.progress, job.error) == (ExportStatus.DONE, 100, "")
    assert job.params["start"] == "2026-10" and job.params["end"] == "2026-11"

    page = staff_client.get(f"/finance/exports/{job.pk}/")
    assert f"/finance/exports/{job.pk}/download" in page.content.decode()
    assert "hx-trigger" not in page.content.decode()  # settled: no more polling

    download = staff_client.get(f"/finance/exports/{job.pk}/download")
    assert download.status_code == 200
    assert download["Content-Disposition"] == (
        f'attachment; filename="{kind}-2026-10_2026-11.{fmt}"'
    )
    rows, columns = _rows(kind)
    rows = list(rows)
    assert rows  # the fixture has documents, lines and postings in these months
    assert job.rows == len(rows)
    if fmt == "csv":
        assert download["Content-Type"] == "text/csv; charset=utf-8"
        expected = io.StringIO(newline="")
        exports.write_csv(rows, columns, expected)
        assert download.content.decode("utf-8") == expected.getvalue()
    else:
        assert download["Content-Type"] == finance.CONTENT_TYPES["xlsx"]
        sheet = load_workbook(io.BytesIO(download.content)).active
        values = list(sheet.values)
        assert values[0] == tuple(column.name for column in columns)
        assert len(values) == len(rows) + 1
        assert sheet.title == "2026-10 to 2026-11"


def test_reconciliation_and_document_exports(
    month,
    staff_client,
    django_capture_on_commit_callbacks,
):
    import zipfile

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(
            "/finance/exports/", {**OCT_NOV, "kind": "reconciliation", "format": "csv"}
        )
        staff_client.post("/finance/exports/", {**OCT_NOV, "kind": "documents", "format": "zip"})
    reconciliation, documents = ExportJob.objects.order_by("pk")
    assert (reconciliation.status, documents.status) == (ExportStatus.DONE, ExportStatus.DONE)
    expected = io.StringIO(newline="")
    exports.write_csv(
        exports.reconciliation_rows(date(2026, 10, 1), date(2026, 11, 30)),
        exports.RECONCILIATION_COLUMNS,
        expected,
    )
    download = staff_client.get(f"/finance/exports/{reconciliation.pk}/download")
    assert download.content.decode("utf-8") == expected.getvalue()
    archive = staff_client.get(f"/finance/exports/{documents.pk}/download")
    assert archive["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    numbers = sorted(
        exports._invoices(RegisterFilter(date(2026, 10, 1), date(2026, 11, 1)))
        .exclude(status="draft")
        .values_list("number", flat=True)
    )
    assert numbers and names == [
        name
        for number in numbers
        for name in (f"{number}.pdf", f"{number}-ubl.xml", f"{number}-cii.xml")
    ]
    assert documents.rows == len(numbers)


def test_a_queued_job_polls_its_progress_bar(month, staff_client):
    response = staff_client.post("/finance/exports/", {**OCT_NOV, "kind": "lines", "format": "csv"})
    job = ExportJob.objects.get()  # the task waits for a commit that never comes in this test
    assert response.status_code == 302 and job.status == ExportStatus.QUEUED
    page = staff_client.get(f"/finance/exports/{job.pk}/").content.decode()
    assert 'aria-label="Export progress"' in page and "<progress" in page
    assert 'hx-trigger="every 1s"' in page
    assert "/download" not in page
    assert staff_client.get(f"/finance/exports/{job.pk}/download").status_code == 302

    partial = staff_client.get(f"/finance/exports/{job.pk}/", headers={"HX-Request": "true"})
    assert partial.content.decode().lstrip().startswith('<div id="export-progress"')

    finance.export_job_run(job_id=job.pk)
    partial = staff_client.get(f"/finance/exports/{job.pk}/", headers={"HX-Request": "true"})
    assert "Download lines-2026-10_2026-11.csv" in partial.content.decode()
    assert "hx-trigger" not in partial.content.decode()


def test_progress_is_saved_every_so_many_rows(month, monkeypatch):
    monkeypatch.setattr(finance, "PROGRESS_EVERY", 2)
    job = ExportJob.objects.create(
        created_by=finance_staff(), kind="journal", format="csv", params=OCT_NOV
    )
    seen = []
    write_csv = exports.write_csv

    def spying(rows, columns, file, **kwargs):
        def watch():
            for i, row in enumerate(rows, 1):
                if i % 2 == 1 and i > 1:
                    seen.append(ExportJob.objects.values_list("progress", "rows").get(pk=job.pk))
                yield row

        return write_csv(watch(), columns, file, **kwargs)

    monkeypatch.setattr(exports, "write_csv", spying)
    finance.export_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == ExportStatus.DONE and job.rows > 4
    assert len(seen) >= 2
    assert [rows for _, rows in seen] == [2 * n for n in range(1, len(seen) + 1)]
    assert all(0 <= progress <= 99 for progress, _ in seen)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


def test_a_failing_export_is_marked_failed_with_its_message(
    month,
    staff_client,
    django_capture_on_commit_callbacks,
    monkeypatch,
):
    def broken(flt):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(exports, "register_rows", broken)
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post("/finance/exports/", {**OCT_NOV, "kind": "register", "format": "csv"})
    job = ExportJob.objects.get()
    assert job.status == ExportStatus.FAILED
    assert job.error == "the database went away"
    page = staff_client.get(f"/finance/exports/{job.pk}/").content.decode()
    assert "The export failed: the database went away" in page
    assert finance.export_job_run(job_id=job.pk).status == ExportStatus.FAILED  # not rerun


def test_the_sweep_resends_lost_exports_and_fails_those_whose_worker_died(
    month, monkeypatch, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    staff, now = finance_staff(), timezone.now()

    def job(minutes_ago, status=ExportStatus.QUEUED, started_minutes_ago=None):
        return ExportJob.objects.create(
            created_by=staff,
            kind="register",
            format="csv",
            params=OCT_NOV,
            status=status,
            created_at=now - timedelta(minutes=minutes_ago),
            started_at=(
                None
                if started_minutes_ago is None
                else now - timedelta(minutes=started_minutes_ago)
            ),
        )

    lost, fresh = job(3), job(1)
    dead = job(45, ExportStatus.RUNNING, started_minutes_ago=41)
    # queued for an hour (the broker was down), taken by a worker 5 minutes ago: still fine
    busy = job(65, ExportStatus.RUNNING, started_minutes_ago=5)
    old_done, recent_done = job(8 * 24 * 60, ExportStatus.DONE), job(6 * 24 * 60, ExportStatus.DONE)
    ExportJob.objects.filter(pk__in=[old_done.pk, recent_done.pk]).update(
        finished_at=now - timedelta(days=1), content=b"x"
    )
    ExportJob.objects.filter(pk=old_done.pk).update(finished_at=now - timedelta(days=8))
    sent = []
    monkeypatch.setattr("billing.tasks.export_run.delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        assert finance.export_jobs_sweep(now) == {"requeued": 1, "failed": 1, "deleted": 1}
    assert not ExportJob.objects.filter(pk=old_done.pk).exists()
    assert ExportJob.objects.filter(pk=recent_done.pk).exists()
    assert sent == [lost.pk]
    dead.refresh_from_db()
    assert dead.status == ExportStatus.FAILED
    assert dead.error == "The export was interrupted; run it again."
    # a running job is not taken a second time; a queued one is, once
    assert finance.export_job_run(job_id=busy.pk).status == ExportStatus.RUNNING
    assert finance.export_job_run(job_id=lost.pk).status == ExportStatus.DONE
    assert finance.export_job_run(job_id=lost.pk).status == ExportStatus.DONE
    lost.refresh_from_db()
    assert lost.started_at is not None and lost.finished_at >= lost.started_at
    fresh.refresh_from_db()
    assert fresh.status == ExportStatus.QUEUED


def test_an_export_asked_for_while_the_broker_is_down_waits_queued(
    month,
    staff_client,
    django_capture_on_commit_callbacks,
    monkeypatch,
):
    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("billing.tasks.export_run.delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/finance/exports/", {**OCT_NOV, "kind": "register", "format": "csv"}
        )
    job = ExportJob.objects.get()
    assert response.status_code == 302 and job.status == ExportStatus.QUEUED


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"kind": "ledger", "format": "csv"}, "export_kind_invalid", "Unknown export “ledger”"),
        ({"kind": "lines", "format": "pdf"}, "export_format_invalid", "Unknown format “pdf”"),
        ({"kind": "documents", "format": "csv"}, "export_format_invalid", "export as ZIP"),
        ({"kind": "register", "format": "zip"}, "export_format_invalid", "export as ZIP"),
        (
            {"kind": "lines", "format": "csv", "start": "2026-11", "end": "2026-10"},
            "range_reversed",
            "The period ends (2026-10) before it starts (2026-11).",
        ),
        (
            {"kind": "lines", "format": "csv", "start": "2023-01", "end": "2026-10"},
            "range_too_large",
            "Export at most 36 months at a time, not 46.",
        ),
    ],
)
def test_an_invalid_export_is_refused_with_422(staff_client, data, code, message):
    response = staff_client.post("/finance/exports/", {"start": "2026-10", **data})
    assert response.status_code == 422
    errors = [response.context.get("export_error"), response.context.get("error")]
    assert code in [e.code for e in errors if e]
    assert message in response.content.decode().replace("&ldquo;", "“").replace("&rdquo;", "”")
    assert not ExportJob.objects.exists()


def test_only_the_creator_or_a_superuser_sees_a_job(client):
    owner = finance_staff()
    job = ExportJob.objects.create(
        created_by=owner, kind="register", format="csv", params={"start": "2026-10"}
    )
    finance.export_job_run(job_id=job.pk)
    client.force_login(finance_staff())
    assert client.get(f"/finance/exports/{job.pk}/").status_code == 404
    assert client.get(f"/finance/exports/{job.pk}/download").status_code == 404
    client.force_login(owner)
    download = client.get(f"/finance/exports/{job.pk}/download")
    assert download.status_code == 200
    assert download["Content-Disposition"] == 'attachment; filename="register-2026-10_2026-10.csv"'
    client.force_login(factories.user(is_staff=True, is_superuser=True))
    assert client.get(f"/finance/exports/{job.pk}/").status_code == 200


def test_the_admin_links_to_the_finance_area(staff_client):
    page = staff_client.get("/admin/")
    assert page.status_code == 200
    assert 'href="/finance/"' in page.content.decode()
