"""The month close: on the 1st, every organisation with usage gets its one invoice, finalized;
safe to re-run, never a second invoice; too early is retried; the demo month."""

import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import close_old_connections

from billing.invoicing import services as invoicing
from billing.models import DocumentSequence, Invoice, LedgerEntry
from portal.errors import Conflict
from tests import factories
from tests.factories.billing import (
    AFTER_CLOSE,
    NOV_START,
    OCT,
    OCT_START,
    H,
    close_month,
    close_through,
    debit_all,
    make_world,
    running_hours,
)

pytestmark = pytest.mark.django_db


def test_the_schedule_runs_it_on_the_first_of_the_month_at_00_05_utc():
    from celery.schedules import crontab

    from portal.scheduled import SCHEDULE

    entry = SCHEDULE["billing-month-close"]
    assert entry["task"] == "billing.month_close"
    assert entry["schedule"] == crontab(minute=5, hour=0, day_of_month=1)
    assert entry["options"]["expires"] > 0
    from billing.tasks import month_close

    assert month_close.name == entry["task"]


def test_organisations_with_usage_get_one_invoice_and_rerunning_changes_nothing(world):
    busy, idle, drafted = world.org, factories.organization(), factories.organization()
    running_hours(busy, world, OCT_START, 5)
    running_hours(drafted, world, datetime(2026, 9, 30, 23, tzinfo=UTC), 1)  # September only
    close_through(NOV_START)
    with time_machine.travel(OCT_START + timedelta(days=3), tick=False):
        invoicing.invoice_draft_refresh(drafted, OCT)  # someone looked at an empty month
    first = close_month()
    assert first.failed == [] and first.finalized == ["INV-2026-000001"]
    assert first.empty_drafts_removed == 1
    invoice = Invoice.objects.get(organization=busy)
    assert invoice.total == Decimal("17.50") and invoice.status == "paid"
    assert not Invoice.objects.filter(organization__in=[idle, drafted]).exists()
    entries = LedgerEntry.objects.count()
    again = close_month(when=AFTER_CLOSE + timedelta(hours=5))
    assert again.finalized == [] and again.already_final == 1
    assert Invoice.objects.filter(kind="invoice").count() == 1
    assert LedgerEntry.objects.count() == entries
    assert "1 already final" in again.summary()


def test_too_early_is_refused_and_the_task_retries_when_it_may_close(world, monkeypatch):
    with pytest.raises(Conflict) as caught:
        close_month(when=NOV_START + timedelta(minutes=5))
    assert caught.value.code == "month_not_closable"
    assert caught.value.details["retry_at"] == "2026-11-01T00:10:00+00:00"
    from celery.exceptions import Retry

    from billing.tasks import month_close

    asked = {}

    def retry(**kwargs):
        asked.update(kwargs)
        return Retry()

    monkeypatch.setattr(month_close, "retry", retry)
    with time_machine.travel(NOV_START + timedelta(minutes=5), tick=False), pytest.raises(Retry):
        month_close("2026-10")
    assert asked == {"countdown": 330}  # 00:10, and half a minute to be sure
    with time_machine.travel(NOV_START + timedelta(minutes=15), tick=False):
        assert month_close.apply().get().startswith("2026-10: 0 invoice(s) finalized")


def test_one_failing_organisation_does_not_stop_the_others(world, monkeypatch):
    """(The PDF is rendered after commit now, so the failure is one in issuing itself.)"""
    other = factories.organization()
    for org in (world.org, other):
        running_hours(org, world, OCT_START, 1)
    close_through(NOV_START)
    snapshot = invoicing.buyer_snapshot

    def flaky(organization):
        if organization.pk == world.org.pk:
            raise RuntimeError("country missing")
        return snapshot(organization)

    monkeypatch.setattr(invoicing, "buyer_snapshot", flaky)
    report = close_month()
    assert report.finalized == ["INV-2026-000001"]  # the other organisation's
    assert report.failed == [(world.org.slug, "country missing")]
    assert "1 FAILED" in report.summary()
    assert Invoice.objects.get(organization=world.org).status == "draft"  # nothing half-done
    assert DocumentSequence.objects.get(series="INV").last == 1  # its number was not used up
    monkeypatch.setattr(invoicing, "buyer_snapshot", snapshot)
    again = close_month()
    assert again.finalized == ["INV-2026-000002"] and again.already_final == 1


def test_close_month_command(world, capsys):
    running_hours(world.org, world, OCT_START, 2)
    close_through(NOV_START)
    with time_machine.travel(AFTER_CLOSE, tick=False):
        call_command("close_month", "--month", "2026-10")
        out = capsys.readouterr().out
        assert "2026-10: 1 invoice(s) finalized" in out and "INV-2026-000001" in out
        with pytest.raises(CommandError, match="YYYY-MM"):
            call_command("close_month", "--month", "October")
        with pytest.raises(CommandError, match="can be closed from"):
            call_command("close_month", "--month", "2026-11")


@pytest.mark.django_db(transaction=True)
def test_two_month_closes_at_once_issue_each_invoice_once(require_postgres):
    world = make_world()
    orgs = [factories.organization() for _ in range(5)]
    for org in orgs:
        running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    barrier = threading.Barrier(2)
    reports, errors = [], []

    def run():
        try:
            barrier.wait()
            reports.append(invoicing.month_close(OCT, now=AFTER_CLOSE))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(2)]
    with time_machine.travel(AFTER_CLOSE, tick=False):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert sorted(Invoice.objects.values_list("number", flat=True)) == [
        f"INV-2026-{n:06d}" for n in range(1, 6)
    ]
    assert sum(len(r.finalized) for r in reports) == 5
    assert sum(r.already_final for r in reports) == 5
    assert all(r.failed == [] for r in reports)


def test_the_billing_demo_is_idempotent(capsys):
    from billing.demo import load_billing_demo
    from portal.accounts.models import Organization

    now = datetime(2026, 11, 26, 9, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        call_command("load_demo_data")  # loads the billing demo once
        first = capsys.readouterr().out
        org = Organization.objects.get(slug="demo")
        second = load_billing_demo(org)
    invoice = Invoice.objects.get(organization=org, period_start=date(2026, 10, 1))
    assert "Billing demo: October 2026 usage, a 500 USD top-up and invoice INV-" in first
    assert second == (
        f"Billing demo: invoice {invoice.number} for October 2026 ({invoice.total} USD) is there."
    )
    assert invoice.status == "paid" and invoice.pdf
    kinds = [line.kind for line in invoice.lines.all()]
    assert kinds.count("compute") == 2 and kinds.count("storage") == 2
    # 40 h of gpu_1x_h200_sxm at 3.79, 120 h of mig_h200_1g_18gb at 0.59, a 500 GB volume for
    # 624 h and a 100 GB boot disk kept 151 h 57 min, at 0.10 per GB-month (730 h)
    assert [line.amount for line in invoice.lines.all()] == [
        Decimal("151.60"),
        Decimal("70.80"),
        Decimal("2.08"),
        Decimal("42.74"),
    ]
    top_ups = LedgerEntry.objects.filter(account__organization=org, kind="top_up")
    assert [e.amount for e in top_ups] == [Decimal(500)]
    assert LedgerEntry.objects.filter(account__organization=org).count() >= 3


# --- set-based: the lines, the numbers, the queries ----------------------------------------------


def _usage_record(org, meter_key, period_start, quantity, *, instance_type=None, region=None):
    """A record of the period starting at ``period_start`` (within its hour)."""
    from portal.metering.models import Meter, UsageRecord
    from portal.metering.services import builtin_meters

    meter = builtin_meters().get(meter_key) or Meter.objects.get(key=meter_key)
    return UsageRecord.objects.create(
        organization=org,
        subject_type="instance" if instance_type else "external",
        subject_id="s",
        meter=meter,
        hour_start=period_start.replace(minute=0, second=0),
        period_start=period_start,
        quantity=Decimal(quantity),
        unit=meter.unit,
        instance_type_id=instance_type.pk if instance_type else None,
        region_id=region.pk if region else None,
    )


def _line(line) -> tuple:
    return (
        line.kind,
        line.description,
        line.meter_key,
        line.instance_type_id,
        line.region_id,
        Decimal(line.quantity),
        line.unit,
        line.unit_price,
        Decimal(line.exact_amount),
    )


def test_a_closed_invoice_says_what_its_last_draft_said(world):
    """The close groups every organisation's records at once; each invoice has the lines the
    running draft computes for its organisation alone: a price changed at a second within an
    hour (two price periods), an operator meter's price changed in the month, storage, a
    meter priced at nothing, another currency, tax statuses, a stale draft."""
    from billing.models import BillingProfile
    from portal.catalog import services as catalog_services
    from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, VOLUME
    from portal.metering.models import Meter, MeterPrice

    one = world.types["gpu_1x_h200"]
    change = datetime(2026, 10, 16, 14, 30, 15, tzinfo=UTC)
    catalog_services.price_set(
        instance_type=one,
        region=world.region,
        currency="USD",
        on_demand_per_hour="4.00",
        effective_from=change,
        allow_past=True,
    )
    catalog_services.price_set(
        instance_type=one,
        region=world.region,
        currency="CNY",
        on_demand_per_hour="24.85",
        effective_from=datetime(2026, 9, 1, tzinfo=UTC),
        allow_past=True,
    )
    tokens = Meter.objects.create(key="tokens.generated", name="Tokens", unit="token")
    Meter.objects.create(key="pings", name="Pings", unit="ping")  # priced at nothing
    for moment, price in (
        (datetime(2026, 9, 1, tzinfo=UTC), "0.000002"),
        (OCT_START + 9 * 24 * H, "0.000003"),
    ):
        MeterPrice.objects.create(
            meter=tokens, currency="USD", price_per_unit=price, effective_from=moment
        )
    usd = world.org
    BillingProfile.objects.create(organization=usd, tax_status="standard", tax_rate="0.19")
    cny = factories.organization(currency="CNY", country="CN", billing_mode="invoiced")
    BillingProfile.objects.update_or_create(
        organization=cny, defaults={"tax_status": "reverse_charge", "tax_rate": "0.06"}
    )
    nothing = factories.organization(billing_mode="invoiced")
    stale = factories.organization()
    for org in (usd, cny, stale):
        running_hours(org, world, OCT_START, 3)
        running_hours(org, world, change.replace(minute=0, second=0) + 2 * H, 2)
    hour = change.replace(minute=0, second=0)
    for org in (usd, cny):
        _usage_record(org, COMPUTE, hour, 1815, instance_type=one, region=world.region)
        _usage_record(org, COMPUTE, change, 1785, instance_type=one, region=world.region)
        _usage_record(org, BOOT_DISK, OCT_START, 3600 * 100, instance_type=one, region=world.region)
        _usage_record(org, VOLUME, OCT_START + H, 3600 * 500, region=world.region)
    _usage_record(usd, "tokens.generated", OCT_START + 4 * 24 * H, 1_000_000)
    _usage_record(usd, "tokens.generated", OCT_START + 12 * 24 * H, 2_500_001)
    _usage_record(nothing, "pings", OCT_START, 1000)
    with time_machine.travel(OCT_START + 5 * 24 * H, tick=False):
        invoicing.invoice_draft_refresh(stale, OCT)  # a draft of the first days only
    running_hours(stale, world, OCT_START + 20 * 24 * H, 5, type_name="gpu_2x_h200", subject="2")
    close_through(NOV_START)
    orgs = [(usd, "USD"), (cny, "CNY"), (nothing, "USD"), (stale, "USD")]
    with time_machine.travel(AFTER_CLOSE, tick=False):
        drafts = {org.pk: invoicing.usage_lines(org, OCT, currency) for org, currency in orgs}
    report = close_month()
    assert report.failed == [] and len(report.finalized) == 4
    for org, currency in orgs:
        invoice = Invoice.objects.get(organization=org, period_start=OCT)
        expected = drafts[org.pk]
        assert [_line(line) for line in invoice.lines.all()] == [_line(x) for x in expected]
        assert [line.position for line in invoice.lines.all()] == list(range(1, len(expected) + 1))
        amounts = [invoicing.money_round(x.exact_amount, currency) for x in expected]
        assert [line.amount for line in invoice.lines.all()] == amounts
        assert invoice.subtotal == sum(amounts) and invoice.currency == currency
        rounding = LedgerEntry.objects.filter(idempotency_key=f"rounding:{invoice.pk}").first()
        debited = invoicing.month_usage_debited(org, OCT)
        assert debited + (rounding.amount if rounding else 0) == -invoice.subtotal
    usd_invoice = Invoice.objects.get(organization=usd, period_start=OCT)
    assert [line.description for line in usd_invoice.lines.all()][:2] == [
        "gpu_1x_h200 in us-east-1, price until 2026-10-16 14:30:15 UTC",
        "gpu_1x_h200 in us-east-1, price from 2026-10-16 14:30:15 UTC",
    ]
    assert usd_invoice.tax == invoicing.money_round(usd_invoice.subtotal * Decimal("0.19"), "USD")
    assert len([x for x in usd_invoice.lines.all() if x.meter_key == "tokens.generated"]) == 2
    cny_invoice = Invoice.objects.get(organization=cny, period_start=OCT)
    assert cny_invoice.tax == 0 and cny_invoice.status == "finalized"
    assert cny_invoice.lines.filter(description__contains="price").count() == 0  # CNY unchanged
    zero = Invoice.objects.get(organization=nothing, period_start=OCT)
    assert zero.total == 0 and (zero.status, zero.paid_reference) == ("paid", "nothing due")


def test_bulk_numbers_follow_the_last_one_in_organisation_order_and_are_never_reused(world):
    from billing.models import DocumentSequence

    orgs = [world.org] + [factories.organization(billing_mode=m) for m in ("invoiced", "prepaid")]
    for org in orgs:
        running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    DocumentSequence.objects.create(series="INV", year=2026, last=41)  # issued earlier this year
    report = close_month()
    numbers = [f"INV-2026-{n:06d}" for n in (42, 43, 44)]
    assert report.finalized == numbers
    invoices = [Invoice.objects.get(organization=org, period_start=OCT) for org in orgs]
    assert [invoice.number for invoice in invoices] == numbers  # in organisation order
    assert DocumentSequence.objects.get(series="INV", year=2026).last == 44
    for invoice in invoices:
        assert invoice.payment_reference == invoicing.creditor_reference(invoice.number)
        assert invoice.issued_at == AFTER_CLOSE
        assert invoice.due_at == AFTER_CLOSE + timedelta(days=30)
        assert invoice.buyer["account"] == invoice.organization.slug and invoice.seller
        assert invoice.pdf is None  # rendered after commit
    assert (invoices[1].status, invoices[1].amount_due) == ("finalized", invoices[1].total)
    assert (invoices[2].status, invoices[2].paid_reference) == ("paid", "credits")
    from portal.accounts.models import AuditEvent

    audit = AuditEvent.objects.filter(target_type="Invoice").order_by("id")
    assert [(a.action, a.target_id) for a in audit] == [
        ("invoice.finalize", str(invoices[0].pk)),
        ("invoice.paid", str(invoices[0].pk)),
        ("invoice.finalize", str(invoices[1].pk)),
        ("invoice.finalize", str(invoices[2].pk)),
        ("invoice.paid", str(invoices[2].pk)),
    ]
    assert audit[0].details == {
        "number": numbers[0],
        "total": str(invoices[0].total),
        "currency": "USD",
    }
    # a second close numbers nothing; a later invoice takes the next number
    assert close_month().finalized == []
    late = factories.organization()
    running_hours(late, world, OCT_START, 1)
    assert close_month().finalized == ["INV-2026-000045"]


def _close_queries(world, count: int, month_start: datetime) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    orgs = [
        factories.organization(billing_mode=("prepaid", "invoiced")[i % 2]) for i in range(count)
    ]
    for org in orgs:
        running_hours(org, world, month_start, 2)
    end = invoicing.next_month(month_start.date())
    close_through(datetime(end.year, end.month, 1, tzinfo=UTC))
    debit_all()
    with (
        time_machine.travel(datetime(end.year, end.month, 1, 1, tzinfo=UTC), tick=False),
        CaptureQueriesContext(connection) as queries,
    ):
        report = invoicing.month_close(month_start.date())
    assert len(report.finalized) == count, report.summary()
    return len(queries)


def test_the_close_makes_as_many_queries_for_thirty_organisations_as_for_three(world):
    """Set-based: no query per organisation (SQLite, which writes fewer rows a statement,
    is given room for one more statement per table)."""
    from django.db import connection

    from billing.models import DocumentSequence

    DocumentSequence.objects.create(series="INV", year=2026)
    few = _close_queries(world, 3, datetime(2026, 8, 1, tzinfo=UTC))
    many = _close_queries(world, 30, datetime(2026, 9, 1, tzinfo=UTC))
    assert many <= few + (0 if connection.vendor == "postgresql" else 2), (few, many)


# --- PDFs after commit ---------------------------------------------------------------------------


def _pdf_text(pdf: bytes) -> str:
    import subprocess

    return subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode()


@pytest.fixture
def renders(monkeypatch):
    """How many PDFs were rendered, and of which documents."""
    from billing.invoicing import documents

    render, seen = documents.render_pdf, []

    def counting(invoice):
        seen.append(invoice.number)
        return render(invoice)

    monkeypatch.setattr(documents, "render_pdf", counting)
    return seen


def test_the_close_renders_no_pdf_workers_render_each_once_after_commit_then_email_it(
    world, renders, django_capture_on_commit_callbacks
):
    from django.core import mail

    other = factories.organization()
    for org in (world.org, other):
        running_hours(org, world, OCT_START, 3)
    close_through(NOV_START)
    with django_capture_on_commit_callbacks() as callbacks:
        report = close_month()
    assert len(report.finalized) == 2
    assert renders == [] and mail.outbox == []  # nothing rendered nor sent inside the close
    invoices = list(Invoice.objects.filter(period_start=OCT).order_by("number"))
    assert all(invoice.pdf is None for invoice in invoices)
    with django_capture_on_commit_callbacks(execute=True):
        for callback in callbacks:  # the commit: the rendering tasks run
            callback()
    assert renders == report.finalized  # each once
    for invoice in invoices:
        invoice.refresh_from_db()
        assert bytes(invoice.pdf).startswith(b"%PDF-")
        sent = [m for m in mail.outbox if invoice.number in m.subject]
        assert sent and all(m.attachments[0][1] == bytes(invoice.pdf) for m in sent)
        assert invoice.number in _pdf_text(bytes(invoice.pdf))
    # the task again (a redelivery): nothing rendered again, the stored PDFs unchanged
    from billing.invoicing.tasks import render_invoice_pdfs

    stored = {invoice.pk: bytes(invoice.pdf) for invoice in invoices}
    render_invoice_pdfs.apply(args=[list(stored), False]).get()
    assert len(renders) == 2
    assert {i.pk: bytes(i.pdf) for i in Invoice.objects.filter(pk__in=stored)} == stored
    # and the database keeps it frozen
    from django.db import DatabaseError, IntegrityError, transaction

    with pytest.raises((IntegrityError, DatabaseError)), transaction.atomic():
        Invoice.objects.filter(pk=invoices[0].pk).update(pdf=b"%PDF-1.7 other")


def test_an_issued_invoice_whose_pdf_is_not_rendered_yet_is_rendered_on_demand_once(
    world, renders, client
):
    from billing.invoicing.documents import invoice_pdf

    running_hours(world.org, world, OCT_START, 2)
    close_through(NOV_START)
    close_month()  # its rendering task is left queued (the test never commits)
    invoice = Invoice.objects.get(organization=world.org, period_start=OCT)
    assert invoice.pdf is None
    client.force_login(world.owner)
    page = client.get(f"/billing/invoices/{invoice.pk}/pdf/")
    assert page.status_code == 200 and page.content.startswith(b"%PDF-")
    invoice.refresh_from_db()
    assert bytes(invoice.pdf) == page.content  # stored as it was served
    assert invoice_pdf(invoice) == page.content and len(renders) == 1  # not rendered again


def test_a_pdf_rendered_after_the_invoice_was_paid_shows_it_as_it_was_issued(world, renders):
    from billing.invoicing.documents import invoice_pdf
    from tests.factories.billing import finance

    org = world.org
    org.billing_mode = "invoiced"
    org.save(update_fields=["billing_mode"])
    running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    close_month()
    invoice = Invoice.objects.get(organization=org, period_start=OCT)
    invoicing.invoice_mark_paid(invoice, reference="BANK-1", actor=finance(org))
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    text = _pdf_text(invoice_pdf(invoice))
    assert "PAYMENT DUE" in text and "Please transfer 7.00 USD by 1 Dec 2026" in text
    assert "BANK-1" not in text and "Thank you" not in text


def test_a_pdf_that_fails_to_render_is_retried_alone_and_its_email_waits_for_it(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    from django.core import mail

    from billing.invoicing import documents
    from billing.invoicing.tasks import render_invoice_pdfs

    other = factories.organization()
    for org in (world.org, other):
        running_hours(org, world, OCT_START, 1)
    close_through(NOV_START)
    close_month()
    first, second = Invoice.objects.filter(period_start=OCT).order_by("number")
    render, attempts = documents.render_pdf, []

    def flaky(invoice):
        attempts.append(invoice.number)
        if invoice.pk == first.pk and attempts.count(first.number) == 1:
            raise OSError("fonts not mounted yet")
        return render(invoice)

    monkeypatch.setattr(documents, "render_pdf", flaky)
    with django_capture_on_commit_callbacks(execute=True):
        # (eagerly, the retry runs at once; a worker would wait 60 s, then twice as long)
        render_invoice_pdfs.apply(args=[[first.pk, second.pk]], throw=False).get()
    assert attempts == [first.number, second.number, first.number]  # the retry: the one alone
    for invoice in (first, second):
        invoice.refresh_from_db()
        assert invoice.pdf and invoice.status == "paid"
    from billing.invoicing.emails import invoice_recipients

    for invoice in (first, second):  # each sent once, the failed one once its PDF was there
        sent = [m for m in mail.outbox if invoice.number in m.subject]
        assert len(sent) == len(invoice_recipients(invoice))
        assert all(m.attachments[0][1] == bytes(invoice.pdf) for m in sent)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_two_real_workers_render_the_closed_invoices_pdfs_after_commit_then_email_them(
    require_postgres, redis_db, tmp_path, monkeypatch
):
    """The close commits its invoices without PDFs; two Celery worker processes take the
    rendering tasks from Redis (one invoice a task here) and store each PDF once."""
    import os

    import redis

    from billing.invoicing import emails
    from tests import workers
    from tests.test_faults import celery_broker

    monkeypatch.setattr(emails, "PDF_CHUNK", 1)
    world = make_world()
    orgs = [world.org] + [factories.organization() for _ in range(3)]
    for org in orgs:
        running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    broker = redis_db(5)
    redis.Redis.from_url(broker).flushdb()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "DATABASE_URL": workers.database_url_for_workers(),
    }
    logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
    started = [workers.start_worker(env, log, name=f"pdf{n}") for n, log in enumerate(logs)]
    try:
        with celery_broker(broker):
            report = close_month()
        assert len(report.finalized) == 4
        invoices = Invoice.objects.filter(period_start=OCT)

        def done(task: str) -> int:
            return sum(
                f"{task}[" in line and "succeeded" in line
                for log in logs
                for line in log.read_text().splitlines()
            )

        workers.wait_until(
            lambda: (
                not invoices.filter(pdf__isnull=True).exists()
                and done("billing.send_invoice_email") >= 4
            ),
            timeout=120,
            what="the PDFs were not all rendered and emailed",
            log=logs[0],
        )
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=20)
    for invoice in invoices:
        assert bytes(invoice.pdf).startswith(b"%PDF-")
    assert done("billing.render_invoice_pdfs") == 4  # one task an invoice, each once


def test_the_issuing_statement_writes_every_issued_column():
    from billing.invoicing import close

    assert len(close.ISSUE_COLUMNS) == len(set(close.ISSUE_COLUMNS))
    assert set(close.ISSUE_COLUMNS) == {"pk", *close.AMOUNT_FIELDS, *invoicing.ISSUE_FIELDS}
    assert close.ISSUE_SQL.count("%s") == len(close.ISSUE_COLUMNS)


def test_a_no_gpu_price_changed_in_the_month_splits_its_line_as_the_draft_does(world):
    """No-GPU mode's price is per region: the close cuts its line where that region's price
    changes, as the running draft does, and leaves another region's line whole."""
    from portal.catalog import services as catalog_services
    from portal.metering.lifecycle_usage import NO_GPU
    from portal.metering.models import MeterPrice
    from portal.metering.services import builtin_meters

    one = world.types["gpu_1x_h200"]
    west = catalog_services.region_ensure(code="us-west-9", name="West", country="US")
    meter = builtin_meters()[NO_GPU]
    change = OCT_START + 10 * 24 * H
    for region, moment, price in (
        (None, datetime(2026, 9, 1, tzinfo=UTC), "0.80"),
        (world.region, change, "0.60"),
    ):
        MeterPrice.objects.create(
            meter=meter, currency="USD", region=region, price_per_unit=price, effective_from=moment
        )
    org = world.org
    for hour, region in ((OCT_START, world.region), (change + 24 * H, world.region)):
        _usage_record(org, NO_GPU, hour, 1800, instance_type=one, region=region)
    _usage_record(org, NO_GPU, OCT_START + 2 * H, 5400, instance_type=one, region=west)
    running_hours(org, world, OCT_START, 1)
    close_through(NOV_START)
    with time_machine.travel(AFTER_CLOSE, tick=False):
        expected = invoicing.usage_lines(org, OCT, "USD")
    assert close_month().failed == []
    invoice = Invoice.objects.get(organization=org, period_start=OCT)
    assert [_line(line) for line in invoice.lines.all()] == [_line(x) for x in expected]
    no_gpu = [
        (line.description, line.quantity, line.unit_price, line.amount)
        for line in invoice.lines.all()
        if line.meter_key == NO_GPU
    ]
    assert no_gpu == [
        (
            "No-GPU mode: gpu_1x_h200 in us-east-1, price until 2026-10-11",
            Decimal("0.5"),
            Decimal("0.80"),
            Decimal("0.40"),
        ),
        (
            "No-GPU mode: gpu_1x_h200 in us-east-1, price from 2026-10-11",
            Decimal("0.5"),
            Decimal("0.60"),
            Decimal("0.30"),
        ),
        ("No-GPU mode: gpu_1x_h200 in us-west-9", Decimal("1.5"), Decimal("0.80"), Decimal("1.20")),
    ]
