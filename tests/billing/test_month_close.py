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
    close_month,
    close_through,
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
    other = factories.organization()
    for org in (world.org, other):
        running_hours(org, world, OCT_START, 1)
    close_through(NOV_START)
    from billing.invoicing import documents

    render = documents.render_pdf

    def flaky(invoice):
        if invoice.organization_id == world.org.pk:
            raise RuntimeError("fonts missing")
        return render(invoice)

    monkeypatch.setattr(documents, "render_pdf", flaky)
    report = close_month()
    assert report.finalized == ["INV-2026-000001"]  # the other organisation's
    assert report.failed == [(world.org.slug, "fonts missing")]
    assert "1 FAILED" in report.summary()
    assert Invoice.objects.get(organization=world.org).status == "draft"  # nothing half-done
    assert DocumentSequence.objects.get(series="INV").last == 1  # its number was not used up
    monkeypatch.setattr(documents, "render_pdf", render)
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
