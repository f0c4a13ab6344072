"""Monthly invoices: lines from the month's usage, rounded once per line; finalizing numbers,
freezes, settles and emails them; payment, void and credit notes; the database freeze.

Amounts are asserted exactly, in minor units where they are money."""

import importlib
import sqlite3
import subprocess
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.invoicing import services as invoicing
from billing.invoicing.documents import invoice_pdf
from billing.ledger.services import account_for, ledger_post
from billing.models import (
    BillingProfile,
    DocumentSequence,
    EntryKind,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    UsageRating,
)
from portal.accounts.models import AuditEvent
from portal.accounts.types import Actor
from portal.catalog import services as catalog_services
from portal.errors import Conflict, InvalidInput, PermissionDenied
from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, VOLUME
from portal.metering.models import Meter, MeterPrice, UsageRecord
from portal.money import money_round
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
    finalize,
    finance,
    issued,
    make_org,
    record,
    running_hours,
)

pytestmark = pytest.mark.django_db


def balance(org) -> Decimal:
    """The sum of the ledger's entries (the cached balance drifts on SQLite, which keeps
    decimals as floating point)."""
    account_for(org)
    return sum(
        LedgerEntry.objects.filter(account__organization=org).values_list("amount", flat=True),
        Decimal(0),
    )


STORAGE = {"USD": "0.10", "CNY": "0.72"}  # settings.STORAGE_PRICE_PER_GB_MONTH


def cents(value: Decimal) -> int:
    assert value == value.quantize(Decimal("0.01"))
    return int(value * 100)


# --- the rounding rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exact", "rounded"),
    [
        ("0.004999999999", "0.00"),
        ("0.005", "0.01"),
        ("2.675", "2.68"),
        ("-0.005", "-0.01"),
        ("-2.674999", "-2.67"),
        ("1234.565000000001", "1234.57"),
    ],
)
def test_money_is_rounded_once_half_up_to_the_minor_unit(exact, rounded):
    assert money_round(Decimal(exact), "USD") == Decimal(rounded)
    assert money_round(Decimal(exact), "CNY") == Decimal(rounded)


def test_months_and_their_bounds():
    assert invoicing.month_start("2028-02") == date(2028, 2, 1)
    assert invoicing.month_bounds(date(2028, 2, 1)) == (
        datetime(2028, 2, 1, tzinfo=UTC),
        datetime(2028, 3, 1, tzinfo=UTC),
    )
    assert invoicing.next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert invoicing.previous_month(datetime(2027, 1, 1, 0, 5, tzinfo=UTC)) == date(2026, 12, 1)
    with pytest.raises(InvalidInput) as caught:
        invoicing.month_start("October")
    assert caught.value.code == "month_invalid"


def test_creditor_reference_is_a_valid_iso_11649_reference():
    reference = invoicing.creditor_reference("INV-2026-000042")
    assert reference == "RF54INV2026000042"
    rearranged = reference[4:] + reference[:4]
    assert int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --- a whole month through the lifecycle, USD ---------------------------------------------------


# Prices (1x before and from the 16th, 2x, storage per GB-month), tax rate, and the invoice:
# 48 h + 24 h of gpu_1x_h200, 1.5 h of gpu_2x_h200, a 100 GB boot disk kept 360 h and a 100 GB
# volume for 360 h (49.315068 GB-months each).
MONTHS = {
    "USD": {
        "prices": ("3.50", "4.00", "7.00"),
        "tax": "0.19",
        "amounts": ["168.00", "96.00", "10.50", "4.93", "4.93"],
        "subtotal": "284.36",
        "tax_amount": "54.03",
        "total": "338.39",
        "top_up": "500",
    },
    "CNY": {
        "prices": ("24.85", "28.40", "49.70"),
        "tax": "0.06",
        "amounts": ["1192.80", "681.60", "74.55", "35.51", "35.51"],
        "subtotal": "2019.97",
        "tax_amount": "121.20",
        "total": "2141.17",
        "top_up": "3500",
    },
}


@pytest.mark.parametrize("currency", ["USD", "CNY"])
def test_a_month_with_launches_stops_a_price_change_a_volume_a_grant_and_a_top_up(
    world, memory_backend, django_capture_on_commit_callbacks, currency
):
    """Instance A (gpu_1x_h200) runs 48 h, is stopped for 360 h (boot disk kept), and runs
    24 h more after its price changed on the 16th; instance B (gpu_2x_h200) runs the last 90
    minutes of the month and on into November; a 100 GB volume lives 360 h. The organisation
    is prepaid (a top-up and a grant) and pays tax at the standard rate."""
    from portal.accounts import services as account_services
    from portal.compute import services as compute
    from portal.compute.models import Instance
    from portal.compute.services import LaunchRequest

    case = MONTHS[currency]
    one, one_later, two = case["prices"]
    if currency == "USD":
        org, owner, key = world.org, world.owner, world.ssh_key
    else:
        org = make_org(currency="CNY", name="深圳算力科技有限公司", country="CN")
        owner = factories.member(org, "owner")
        key = account_services.ssh_key_create(
            actor=Actor.system(org), public_key=factories.ed25519_public_key()
        )
        for name, price in (("gpu_1x_h200", one), ("gpu_2x_h200", two)):
            catalog_services.price_set(
                instance_type=world.types[name],
                region=world.region,
                currency="CNY",
                on_demand_per_hour=price,
                effective_from=datetime(2026, 9, 1, tzinfo=UTC),
                allow_past=True,
            )
    BillingProfile.objects.create(organization=org, tax_status="standard", tax_rate=case["tax"])
    actor = factories.actor(org, owner)

    def request(name, instance_type="gpu_1x_h200"):
        return LaunchRequest(
            name=name,
            instance_type=instance_type,
            region=world.region.code,
            image=world.image.name,
            ssh_key_ids=(key.pk,),
        )

    with time_machine.travel(OCT_START, tick=False) as clock:
        before = balance(org)
        for kind, amount in ((EntryKind.TOP_UP, case["top_up"]), (EntryKind.GRANT, "50")):
            ledger_post(
                organization=org,
                kind=kind,
                amount=amount,
                idempotency_key=f"test-{kind}",
                description=kind,
                actor_label="test",
            )
        catalog_services.price_set(
            instance_type=world.types["gpu_1x_h200"],
            region=world.region,
            currency=currency,
            on_demand_per_hour=one_later,
            effective_from=datetime(2026, 10, 16, tzinfo=UTC),
        )

        def step(when, action=None, instance=None):
            clock.move_to(when)
            if action:
                compute.instance_action(actor=actor, instance_id=instance.pk, action=action)
            compute.instance_sync(instance_id=instance.pk)

        clock.move_to(datetime(2026, 10, 3, 10, tzinfo=UTC))
        a, _ = compute.instance_launch(actor=actor, request=request("a"))
        step(datetime(2026, 10, 3, 10, tzinfo=UTC), instance=a)
        step(datetime(2026, 10, 5, 10, tzinfo=UTC), "stop", a)
        clock.move_to(datetime(2026, 10, 10, tzinfo=UTC))
        volume = compute.volume_create(
            actor=actor, name="data", region=world.region.code, size_gb=100
        )
        step(datetime(2026, 10, 20, 10, tzinfo=UTC), "start", a)
        step(datetime(2026, 10, 21, 10, tzinfo=UTC), "terminate", a)
        clock.move_to(datetime(2026, 10, 25, tzinfo=UTC))
        compute.volume_delete(actor=actor, volume_id=volume.pk)
        clock.move_to(datetime(2026, 10, 31, 22, 30, tzinfo=UTC))
        b, _ = compute.instance_launch(actor=actor, request=request("b", "gpu_2x_h200"))
        step(datetime(2026, 10, 31, 22, 30, tzinfo=UTC), instance=b)
    assert Instance.objects.get(pk=a.pk).state == "terminated"
    assert a.disk_gb == 100

    with django_capture_on_commit_callbacks(execute=True):
        report = close_month()
    assert report.failed == [] and len(report.finalized) == 1
    invoice = Invoice.objects.get(organization=org, period_start=OCT)
    assert invoice.currency == currency
    lines = [
        (line.description, line.quantity, line.unit, line.unit_price)
        for line in invoice.lines.all()
    ]
    storage = Decimal(STORAGE[currency])
    assert lines == [
        ("gpu_1x_h200 in us-east-1, price until 2026-10-16", 48, "hour", Decimal(one)),
        ("gpu_1x_h200 in us-east-1, price from 2026-10-16", 24, "hour", Decimal(one_later)),
        ("gpu_2x_h200 in us-east-1", Decimal("1.5"), "hour", Decimal(two)),
        (
            "Boot disks of stopped gpu_1x_h200 instances in us-east-1",
            Decimal("49.315068"),
            "GB-month",
            storage,
        ),
        ("Volumes in us-east-1", Decimal("49.315068"), "GB-month", storage),
    ]
    assert [cents(line.amount) for line in invoice.lines.all()] == [
        cents(Decimal(amount)) for amount in case["amounts"]
    ]
    assert cents(invoice.subtotal) == cents(Decimal(case["subtotal"]))
    assert cents(invoice.tax) == cents(Decimal(case["tax_amount"]))
    assert cents(invoice.total) == cents(Decimal(case["total"]))
    assert invoice.number == "INV-2026-000001"
    assert invoice.status == "paid" and invoice.paid_reference == "credits"
    assert (invoice.credits_applied, invoice.amount_due) == (invoice.total, 0)
    assert invoice.issued_at == AFTER_CLOSE and invoice.due_at == AFTER_CLOSE + timedelta(days=30)
    assert invoice.tax_status == "standard" and invoice.tax_rate == Decimal(case["tax"])
    # The ledger: usage (rated per record) + rounding is the invoice's usage total to the cent,
    # and the balance moved by the top-up, the grant and minus the invoice total.
    usage = invoicing.month_usage_debited(org, OCT)
    rounding = LedgerEntry.objects.filter(idempotency_key=f"rounding:{invoice.pk}").first()
    assert usage + (rounding.amount if rounding else 0) == -invoice.subtotal
    assert LedgerEntry.objects.get(idempotency_key=f"tax:{invoice.pk}").amount == -invoice.tax
    assert balance(org) == before + Decimal(case["top_up"]) + 50 - invoice.total
    # Instance B keeps running in November: those hours are not closed, nor on this invoice.
    assert not UsageRecord.objects.filter(hour_start__gte=NOV_START).exists()
    # Emailed once, with the PDF, to the billing address and the owner.
    assert len(mail.outbox) == 2
    assert {m.to[0] for m in mail.outbox} == {org.billing_email, owner.email}
    name, content, mimetype = mail.outbox[0].attachments[0]
    assert (name, mimetype) == ("INV-2026-000001.pdf", "application/pdf")
    assert content == bytes(invoice.pdf)
    text = pdf_text(invoice)
    assert org.name in text and invoice.number in text and f"{invoice.total:,}" in text


# --- lines from records -----------------------------------------------------------------------


def test_draft_shows_unrated_usage_as_the_invoice_will_and_refreshing_is_idempotent(world):
    org = world.org
    running_hours(org, world, OCT_START + 10 * H, 3, seconds=1000)  # 3 x 1000 s at 3.50/h
    with time_machine.travel(OCT_START + 20 * H, tick=False):
        draft = invoicing.invoice_draft_refresh(org, OCT)
        again = invoicing.invoice_draft_refresh(org, "2026-10")
    assert draft.pk == again.pk and draft.status == "draft" and draft.number is None
    line = again.lines.get()
    # 3000 s at 3.50/h = 2.916666...: exact to 12 places, rounded once to 2.92
    assert line.exact_amount == 3 * Decimal("0.972222222222") == Decimal("2.916666666666")
    assert line.amount == Decimal("2.92") and line.quantity == Decimal("0.833333")
    assert line.unit_price == Decimal("3.5")
    assert InvoiceLine.objects.filter(invoice=draft).count() == 1
    debit_all()
    with time_machine.travel(OCT_START + 21 * H, tick=False):
        rated = invoicing.invoice_draft_refresh(org, OCT)
    assert rated.lines.get().exact_amount == line.exact_amount
    assert invoicing.invoice_list(org).count() == 1
    assert invoicing.invoice_get(factories.organization(), draft.pk) is None


def test_lines_per_type_and_region_storage_and_meters_in_order(world):
    org = world.org
    other_region = catalog_services.region_ensure(code="eu-west-9", name="EU West 9", country="IE")
    catalog_services.price_set(
        instance_type=world.types["gpu_1x_h200"],
        region=other_region,
        currency="USD",
        on_demand_per_hour="3.10",
        effective_from=datetime(2026, 9, 1, tzinfo=UTC),
        allow_past=True,
    )
    tokens = Meter.objects.create(key="tokens.generated", name="Tokens generated", unit="token")
    MeterPrice.objects.create(
        meter=tokens,
        currency="USD",
        price_per_unit=Decimal("0.000002"),
        effective_from=datetime(2026, 9, 1, tzinfo=UTC),
    )
    running_hours(org, world, OCT_START, 2, type_name="gpu_8x_h200", subject="8")
    running_hours(org, world, OCT_START, 1)
    for i in range(2):
        record(
            org,
            COMPUTE,
            OCT_START + i * H,
            3600,
            instance_type=world.types["gpu_1x_h200"],
            region=other_region,
            subject="9",
        )
    record(org, VOLUME, OCT_START, 3600 * 500, region=world.region, subject="v1")
    record(
        org,
        BOOT_DISK,
        OCT_START,
        3600 * 100,
        instance_type=world.types["gpu_1x_h200"],
        region=world.region,
    )
    record(
        org,
        BOOT_DISK,
        OCT_START,
        3600 * 200,
        instance_type=world.types["gpu_8x_h200"],
        region=world.region,
        subject="8",
    )
    record(org, "tokens.generated", OCT_START, 1_234_567, subject="endpoint-1")
    with time_machine.travel(OCT_START + 5 * H, tick=False):
        invoice = invoicing.invoice_draft_refresh(org, OCT)
    assert [(x.kind, x.description, x.quantity, x.amount) for x in invoice.lines.all()] == [
        ("compute", "gpu_1x_h200 in eu-west-9", Decimal(2), Decimal("6.20")),
        ("compute", "gpu_1x_h200 in us-east-1", Decimal(1), Decimal("3.50")),
        ("compute", "gpu_8x_h200 in us-east-1", Decimal(2), Decimal("56.00")),
        (
            "storage",
            "Boot disks of stopped gpu_1x_h200 instances in us-east-1",
            Decimal("0.136986"),
            Decimal("0.01"),
        ),
        (  # a second instance type's disks: its own line, named so no two lines read alike
            "storage",
            "Boot disks of stopped gpu_8x_h200 instances in us-east-1",
            Decimal("0.273973"),
            Decimal("0.03"),
        ),
        ("storage", "Volumes in us-east-1", Decimal("0.684932"), Decimal("0.07")),
        ("meter", "Tokens generated (tokens.generated)", Decimal(1234567), Decimal("2.47")),
    ]
    assert [x.position for x in invoice.lines.all()] == [1, 2, 3, 4, 5, 6, 7]
    descriptions = [x.description for x in invoice.lines.all()]
    assert len(set(descriptions)) == len(descriptions)
    assert (
        invoice.subtotal == Decimal("68.28")
        and invoice.tax == 0
        and invoice.total == Decimal("68.28")
    )


def test_month_end_and_leap_year_boundaries(world):
    org = world.org
    running_hours(org, world, datetime(2028, 1, 31, 23, tzinfo=UTC), 1)  # January's last hour
    running_hours(org, world, datetime(2028, 2, 29, 22, tzinfo=UTC), 2)  # the leap day's last two
    running_hours(org, world, datetime(2028, 3, 1, tzinfo=UTC), 1)  # March's first hour
    close_through(datetime(2028, 3, 1, 1, tzinfo=UTC))
    debit_all()
    when = datetime(2028, 3, 1, 1, tzinfo=UTC)
    with time_machine.travel(when, tick=False):
        report = invoicing.month_close(date(2028, 2, 1))
    feb = Invoice.objects.get(organization=org, period_start=date(2028, 2, 1))
    assert report.finalized == [feb.number] == ["INV-2028-000001"]
    assert (feb.period_start, feb.period_end) == (date(2028, 2, 1), date(2028, 3, 1))
    assert feb.lines.get().quantity == 2 and feb.total == Decimal("7.00")
    text = pdf_text(feb)
    assert "1 Feb 2028 \u2013 29 Feb 2028" in text
    # January and March are other invoices; the previous month by default
    with time_machine.travel(datetime(2028, 3, 31, tzinfo=UTC), tick=False):
        assert invoicing.invoice_draft_refresh(org).period_start == date(2028, 3, 1)
    assert Invoice.objects.get(period_start=date(2028, 3, 1)).total == Decimal("3.50")
    with time_machine.travel(datetime(2028, 2, 1, 1, tzinfo=UTC), tick=False):
        assert invoicing.month_close().month == date(2028, 1, 1)
    assert Invoice.objects.get(period_start=date(2028, 1, 1)).total == Decimal("3.50")


# --- the ledger ---------------------------------------------------------------------------------


def test_rounding_makes_the_ledger_usage_equal_the_invoice_to_the_cent(world):
    """Seven records of 1,001 s at 3.50/h are 0.973194444444 each: the ledger debits 6.81236...
    but the invoice line is 6.81; the rounding entry is +0.002361111108."""
    org = world.org
    for i in range(7):
        running_hours(org, world, OCT_START + i * H, 1, seconds=1001)
    close_through(NOV_START)
    debit_all()
    usage = invoicing.month_usage_debited(org, OCT)
    assert usage == -7 * (Decimal(1001) * Decimal("3.50") / 3600).quantize(Decimal("1e-12"))
    invoice = finalize(invoicing.invoice_draft_refresh(org, OCT))
    assert invoice.subtotal == Decimal("6.81")
    rounding = LedgerEntry.objects.get(idempotency_key=f"rounding:{invoice.pk}")
    assert rounding.kind == "rounding" and rounding.amount == Decimal("0.002361111108")
    assert usage + rounding.amount == -invoice.subtotal
    assert rounding.reference == invoice.number
    assert invoicing.month_rounding(org, OCT) == rounding.amount


def test_finalize_debits_the_months_usage_first(world):
    org = world.org
    running_hours(org, world, OCT_START, 4)
    close_through(NOV_START)
    assert UsageRating.objects.count() == 0
    invoice = finalize(invoicing.invoice_draft_refresh(org, OCT))
    assert UsageRating.objects.count() == 4
    assert invoicing.month_usage_debited(org, OCT) == Decimal("-14.00") == -invoice.subtotal
    assert not LedgerEntry.objects.filter(kind="rounding").exists()  # nothing to round


def test_finalize_refuses_a_month_not_over_or_not_closed(world):
    org = world.org
    running_hours(org, world, OCT_START, 1)
    draft = invoicing.invoice_draft_refresh(org, OCT)
    with pytest.raises(Conflict) as caught:
        finalize(draft, when=OCT_START + 30 * 24 * H)
    assert caught.value.code == "period_not_ended"
    close_through(OCT_START + 2 * H)
    with pytest.raises(Conflict) as caught:
        finalize(draft)
    assert caught.value.code == "usage_not_closed"
    with pytest.raises(PermissionDenied):
        invoicing.invoice_finalize(draft, actor=factories.actor(org, world.owner))
    for refusal in [
        lambda: invoicing.invoice_mark_paid(draft, reference="x", actor=finance(org)),
        lambda: invoicing.invoice_void(draft, actor=finance(org), reason="x"),
        lambda: invoicing.credit_note_create(draft, actor=finance(org), amount="1", reason="x"),
        lambda: invoicing.invoice_resend(draft, actor=finance(org)),
    ]:
        with pytest.raises(Conflict) as caught:
            refusal()
        assert caught.value.code == "invoice_not_finalized"
    assert Invoice.objects.get(pk=draft.pk).status == "draft"


# --- prepaid, invoiced, payment, void, credit notes ------------------------------------------------


def test_invoiced_organisation_owes_the_total_until_marked_paid(world):
    org = world.org
    start = balance(org)
    invoice = issued(world)
    assert (invoice.subtotal, invoice.tax, invoice.total) == (
        Decimal("35.00"),
        Decimal("7.00"),
        Decimal("42.00"),
    )
    assert invoice.status == "finalized" and invoice.amount_due == Decimal("42.00")
    assert invoice.credits_applied == 0 and invoice.due_at == AFTER_CLOSE + timedelta(days=14)
    assert invoice.payment_reference == invoicing.creditor_reference(invoice.number)
    assert invoice.seller["tax_id"] == "DE123456789" and invoice.buyer["name"] == org.name
    assert balance(org) == start - Decimal("42.00")
    assert not invoicing.invoice_overdue(org, now=AFTER_CLOSE + timedelta(days=13))
    assert invoicing.invoice_overdue(org, now=AFTER_CLOSE + timedelta(days=15))
    with pytest.raises(InvalidInput) as caught:
        invoicing.invoice_mark_paid(invoice, reference=" ", actor=finance(org))
    assert caught.value.code == "reference_required"
    paid = invoicing.invoice_mark_paid(invoice, reference="BANK-2026-11-03-17", actor=finance(org))
    assert paid.status == "paid" and paid.paid_reference == "BANK-2026-11-03-17"
    payment = LedgerEntry.objects.get(idempotency_key=f"invoice-paid:{invoice.pk}")
    assert payment.kind == "payment" and payment.amount == Decimal("42.00")
    assert balance(org) == start
    assert not invoicing.invoice_overdue(org, now=AFTER_CLOSE + timedelta(days=60))
    for refusal, code in [
        (
            lambda: invoicing.invoice_mark_paid(paid, reference="again", actor=finance(org)),
            "invoice_already_paid",
        ),
        (
            lambda: invoicing.invoice_void(paid, actor=finance(org), reason="x"),
            "invoice_already_paid",
        ),
    ]:
        with pytest.raises(Conflict) as caught:
            refusal()
        assert caught.value.code == code
    assert list(
        AuditEvent.objects.filter(target_id=str(invoice.pk), target_type="Invoice")
        .values_list("action", flat=True)
        .order_by("id")
    ) == ["invoice.finalize", "invoice.paid"]


def test_prepaid_invoice_is_paid_from_credits_with_the_tax_debited(world):
    org = world.org
    start = balance(org)
    invoice = issued(world, mode="prepaid", hours=3, tax="0.19")
    assert (invoice.subtotal, invoice.tax, invoice.total) == (
        Decimal("10.50"),
        Decimal("2.00"),
        Decimal("12.50"),
    )
    assert invoice.status == "paid" and invoice.paid_reference == "credits"
    assert (invoice.credits_applied, invoice.amount_due) == (Decimal("12.50"), 0)
    assert LedgerEntry.objects.get(idempotency_key=f"tax:{invoice.pk}").amount == Decimal("-2.00")
    assert balance(org) == start - Decimal("12.50")
    with pytest.raises(Conflict) as caught:
        invoicing.invoice_mark_paid(invoice, reference="x", actor=finance(org))
    assert caught.value.code == "invoice_already_paid"


def test_void_cancels_what_is_due(world):
    org = world.org
    start = balance(org)
    invoice = issued(world)
    with pytest.raises(InvalidInput):
        invoicing.invoice_void(invoice, actor=finance(org), reason="")
    voided = invoicing.invoice_void(invoice, actor=finance(org), reason="Issued in error")
    assert voided.status == "void" and voided.voided_at and voided.note == "Void: Issued in error"
    assert balance(org) == start
    assert not invoicing.invoice_overdue(org, now=AFTER_CLOSE + timedelta(days=60))
    for refusal, code in [
        (lambda: invoicing.invoice_void(voided, actor=finance(org), reason="x"), "invoice_void"),
        (
            lambda: invoicing.invoice_mark_paid(voided, reference="x", actor=finance(org)),
            "invoice_void",
        ),
        (
            lambda: invoicing.credit_note_create(
                voided, actor=finance(org), amount="1", reason="x"
            ),
            "invoice_void",
        ),
    ]:
        with pytest.raises(Conflict) as caught:
            refusal()
        assert caught.value.code == code
    # the month keeps its one (void) invoice: closing it again issues nothing new
    assert close_month().finalized == []
    assert Invoice.objects.filter(organization=org, kind="invoice").count() == 1


def test_credit_notes_of_an_unpaid_invoiced_invoice_lower_what_is_due(
    world, django_capture_on_commit_callbacks
):
    org = world.org
    start = balance(org)
    invoice = issued(world)  # 35.00 + 20 % = 42.00 due
    with django_capture_on_commit_callbacks(execute=True):
        note = invoicing.credit_note_create(
            invoice, actor=finance(org), amount="10.00", reason="Host outage on 12 Oct"
        )
    assert note.kind == "credit_note" and note.corrects_id == invoice.pk
    assert note.number == "CN-2026-000001" and note.status == "finalized"
    assert (note.subtotal, note.tax, note.total) == (
        Decimal("-10.00"),
        Decimal("-2.00"),
        Decimal("-12.00"),
    )
    line = note.lines.get()
    assert (line.kind, line.description, line.amount) == (
        "credit",
        "Credit: Host outage on 12 Oct",
        Decimal("-10.00"),
    )
    assert note.pdf and b"%PDF" in bytes(note.pdf)[:8]
    invoice.refresh_from_db()
    assert invoice.amount_due == Decimal("30.00") and invoice.status == "finalized"
    assert LedgerEntry.objects.get(idempotency_key=f"credit-note:{note.pk}").amount == Decimal(
        "12.00"
    )
    assert balance(org) == start - Decimal("30.00")
    text = pdf_text(note)
    assert "CREDIT NOTE" in text and f"corrects invoice {invoice.number}" in text
    assert mail.outbox[-1].attachments[0][0] == "CN-2026-000001.pdf"
    with pytest.raises(Conflict) as caught:
        invoicing.credit_note_create(invoice, actor=finance(org), amount="25.01", reason="too much")
    assert caught.value.code == "credit_exceeds_invoice"
    assert caught.value.details == {"creditable": "25.00"}
    with pytest.raises(InvalidInput):
        invoicing.credit_note_create(invoice, actor=finance(org), amount="1.001", reason="x")
    # crediting the rest, in lines, leaves nothing due: the invoice is settled by the notes
    last = invoicing.credit_note_create(
        invoice,
        actor=finance(org),
        lines=[("GPU hours not delivered", "20"), ("Support credit", "5")],
        reason="Outage",
    )
    assert last.number == "CN-2026-000002" and last.total == Decimal("-30.00")
    invoice.refresh_from_db()
    assert (
        invoice.amount_due == 0
        and invoice.status == "paid"
        and invoice.paid_reference == last.number
    )
    assert balance(org) == start


def test_credit_note_of_a_prepaid_invoice_gives_credit_back(world):
    org = world.org
    invoice = issued(world, mode="prepaid", hours=4, tax="0")
    after = balance(org)
    note = invoicing.credit_note_create(
        invoice, actor=finance(org), amount="14.00", reason="Goodwill"
    )
    assert note.total == Decimal("-14.00")
    entry = LedgerEntry.objects.get(idempotency_key=f"credit-note:{note.pk}")
    assert entry.kind == "adjustment" and entry.amount == Decimal("14.00")
    assert balance(org) == after + Decimal("14.00")


def test_finalize_twice_changes_nothing(world, django_capture_on_commit_callbacks):
    invoice = issued(world)
    entries, sequence = LedgerEntry.objects.count(), DocumentSequence.objects.get(series="INV").last
    with django_capture_on_commit_callbacks(execute=True):
        again = finalize(invoice)
    assert again.number == invoice.number and again.issued_at == invoice.issued_at
    assert (LedgerEntry.objects.count(), DocumentSequence.objects.get(series="INV").last) == (
        entries,
        sequence,
    )
    assert mail.outbox == []


def test_resend_emails_the_stored_pdf_again(world, django_capture_on_commit_callbacks):
    invoice = issued(world)
    factories.member(world.org, "billing")
    factories.member(world.org, "viewer")
    with django_capture_on_commit_callbacks(execute=True):
        invoicing.invoice_resend(invoice, actor=finance(world.org))
    assert len(mail.outbox) == 3  # billing address, owner, billing member (not the viewer)
    assert all(m.attachments[0][1] == bytes(invoice.pdf) for m in mail.outbox)
    assert AuditEvent.objects.filter(action="invoice.resend").count() == 1


# --- numbering ----------------------------------------------------------------------------------


def test_numbers_are_gapless_per_series_and_year(world):
    orgs = [make_org() for _ in range(3)]
    for org in orgs:
        running_hours(org, world, OCT_START, 1)
    close_through(NOV_START)
    numbers = [finalize(invoicing.invoice_draft_refresh(org, OCT)).number for org in orgs]
    assert numbers == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]
    for org in orgs[:1]:
        running_hours(org, world, NOV_START, 1)
    close_through(datetime(2027, 1, 1, tzinfo=UTC))
    december = finalize(
        invoicing.invoice_draft_refresh(orgs[0], date(2026, 11, 1)),
        when=datetime(2027, 1, 1, 1, tzinfo=UTC),
    )
    assert december.number == "INV-2027-000001"  # the year of issue


@pytest.mark.django_db(transaction=True)
def test_concurrent_finalizing_gives_consecutive_numbers(require_postgres):
    from tests.factories import World

    with time_machine.travel(datetime(2026, 9, 1, tzinfo=UTC), tick=False):
        world = World()
    orgs = [make_org() for _ in range(6)]
    for org in orgs:
        running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    debit_all()
    drafts = [invoicing.invoice_draft_refresh(org, OCT) for org in orgs]
    barrier = threading.Barrier(len(drafts))
    errors = []

    def worker(draft):
        try:
            barrier.wait()
            invoicing.invoice_finalize(draft, actor=Actor.system(draft.organization), notify=False)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=worker, args=(d,)) for d in drafts]
    with time_machine.travel(AFTER_CLOSE, tick=False):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 7)]
    assert DocumentSequence.objects.get(series="INV", year=2026).last == 6


# --- the freeze ---------------------------------------------------------------------------------


def frozen(statement, params=()):
    """The statement is refused by the database (and leaves the transaction usable)."""
    with (
        pytest.raises((IntegrityError, DatabaseError)) as caught,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, params)
    assert "frozen" in str(caught.value)


def test_the_database_refuses_changes_to_an_issued_invoice_and_its_lines(world):
    invoice = issued(world)
    line = invoice.lines.first()
    for statement, params in [
        (
            "UPDATE billing_invoice SET total = total + 1, subtotal = subtotal + 1 WHERE id = %s",
            [invoice.pk],
        ),
        ("UPDATE billing_invoice SET number = 'INV-2026-999999' WHERE id = %s", [invoice.pk]),
        ("UPDATE billing_invoice SET seller = '{}' WHERE id = %s", [invoice.pk]),
        ("UPDATE billing_invoice SET pdf = NULL WHERE id = %s", [invoice.pk]),
        ("UPDATE billing_invoice SET status = 'draft', number = NULL WHERE id = %s", [invoice.pk]),
        ("DELETE FROM billing_invoice WHERE id = %s", [invoice.pk]),
        ("UPDATE billing_invoiceline SET amount = 0 WHERE id = %s", [line.pk]),
        ("DELETE FROM billing_invoiceline WHERE id = %s", [line.pk]),
        (
            "INSERT INTO billing_invoiceline (invoice_id, position, kind, description, meter_key, "
            "quantity, unit, exact_amount, amount) VALUES (%s, 99, 'adjustment', 'x', '', 1, 'x', 1, 1)",
            [invoice.pk],
        ),
    ]:
        frozen(statement, params)
    for attempt in [
        lambda: Invoice.objects.filter(pk=invoice.pk).update(tax=0),
        lambda: InvoiceLine.objects.filter(invoice=invoice).update(description="edited"),
        lambda: invoice.delete(),
    ]:
        with pytest.raises((IntegrityError, DatabaseError)), transaction.atomic():
            attempt()
    # What payment and void need stays possible.
    Invoice.objects.filter(pk=invoice.pk).update(amount_due=Decimal("1.00"), note="n")
    Invoice.objects.filter(pk=invoice.pk).update(status="paid", paid_reference="r")
    with pytest.raises((IntegrityError, DatabaseError)), transaction.atomic():
        Invoice.objects.filter(pk=invoice.pk).update(status="finalized")  # paid is final
    invoice.refresh_from_db()
    assert invoice.total == Decimal("42.00") and invoice.lines.count() == 1


def test_drafts_stay_editable(world):
    running_hours(world.org, world, OCT_START, 1)
    draft = invoicing.invoice_draft_refresh(world.org, OCT)
    InvoiceLine.objects.filter(invoice=draft).update(description="changed")
    Invoice.objects.filter(pk=draft.pk).update(note="draft note")
    draft.delete()


def test_the_freeze_triggers_are_installed():
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'billing_%'"
            )
        else:
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'billing_%' AND NOT tgisinternal"
            )
        names = {row[0] for row in cursor.fetchall()}
    expected = (
        {
            "billing_invoice_freeze_update",
            "billing_invoice_freeze_delete",
            "billing_invoiceline_freeze_insert",
            "billing_invoiceline_freeze_update",
            "billing_invoiceline_freeze_delete",
        }
        if connection.vendor == "sqlite"
        else {"billing_invoice_freeze", "billing_invoiceline_freeze"}
    )
    assert expected <= names


def test_the_sqlite_triggers_freeze_whatever_database_the_suite_runs_on():
    """The SQLite SQL of the migration, on a private SQLite database (so a PostgreSQL run of the
    suite checks it too)."""
    migration = importlib.import_module("billing.migrations.0003_invoice_freeze")
    db = sqlite3.connect(":memory:")
    columns = ", ".join(f"{c}" for c in migration.FROZEN)
    db.execute(
        f"CREATE TABLE billing_invoice (id INTEGER PRIMARY KEY, status TEXT, pdf BLOB, amount_due NUMERIC, "
        f"paid_reference TEXT, note TEXT, {columns})"
    )
    db.execute(
        "CREATE TABLE billing_invoiceline (id INTEGER PRIMARY KEY, invoice_id INTEGER, amount NUMERIC)"
    )
    for statement in migration.SQLITE:
        db.execute(statement)
    db.execute(
        "INSERT INTO billing_invoice (id, status, total, number, pdf) VALUES (1, 'draft', 10, NULL, NULL)"
    )
    db.execute("INSERT INTO billing_invoiceline (invoice_id, amount) VALUES (1, 10)")
    db.execute(
        "UPDATE billing_invoice SET status = 'finalized', number = 'INV-1', pdf = x'25' WHERE id = 1"
    )
    db.execute(
        "UPDATE billing_invoice SET amount_due = 0, status = 'paid', paid_reference = 'r' WHERE id = 1"
    )
    for statement in [
        "UPDATE billing_invoice SET total = 11 WHERE id = 1",
        "UPDATE billing_invoice SET pdf = x'26' WHERE id = 1",
        "UPDATE billing_invoice SET status = 'void' WHERE id = 1",
        "DELETE FROM billing_invoice WHERE id = 1",
        "UPDATE billing_invoiceline SET amount = 1",
        "DELETE FROM billing_invoiceline",
        "INSERT INTO billing_invoiceline (invoice_id, amount) VALUES (1, 1)",
    ]:
        with pytest.raises(sqlite3.IntegrityError, match="frozen"):
            db.execute(statement)


# --- documents ------------------------------------------------------------------------------------


def pdf_text(invoice) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", "-", "-"],
        input=invoice_pdf(invoice),
        capture_output=True,
        check=True,
    ).stdout.decode()


def test_a_cny_invoice_renders_its_chinese_name_number_and_totals(world):
    org = make_org(
        currency="CNY", name="深圳算力科技有限公司", country="CN", tax_id="91440300MA5FXXXX1A"
    )
    BillingProfile.objects.create(organization=org, tax_status="standard", tax_rate="0.06")
    catalog_services.price_set(
        instance_type=world.types["gpu_8x_h200"],
        region=world.region,
        currency="CNY",
        on_demand_per_hour="198.80",
        effective_from=datetime(2026, 9, 1, tzinfo=UTC),
        allow_past=True,
    )
    for i in range(100):
        record(
            org,
            COMPUTE,
            OCT_START + i * H,
            3600,
            instance_type=world.types["gpu_8x_h200"],
            region=world.region,
        )
    record(org, VOLUME, OCT_START, Decimal(2000 * 3600), region=world.region, subject="v")
    close_through(NOV_START)
    draft = invoicing.invoice_draft_refresh(org, OCT)
    draft_text = pdf_text(draft)
    assert "DRAFT" in draft_text and "深圳算力科技有限公司" in draft_text
    invoice = finalize(draft)
    assert invoice.currency == "CNY"
    # 100 h x 198.80 = 19,880.00; 2,000 GB-hours at 0.72/GB-month = 1.972602... -> 1.97
    assert invoice.subtotal == Decimal("19881.97") and invoice.tax == Decimal("1192.92")
    assert invoice.total == Decimal("21074.89")
    text = pdf_text(invoice)
    for expected in [
        "深圳算力科技有限公司",
        invoice.number,
        "19,881.97",
        "1,192.92",
        "21,074.89",
        "CNY",
        "Tax 6 %",
        "91440300MA5FXXXX1A",
        "China",
    ]:
        assert expected in text, expected
    assert "DRAFT" not in text
    assert invoice_pdf(invoice) == bytes(invoice.pdf)  # the stored bytes, not a new rendering


def test_reverse_charge_invoice_says_so_and_bank_details_are_for_invoiced_organisations(world):
    org = world.org
    org.billing_mode = "invoiced"
    org.save(update_fields=["billing_mode"])
    BillingProfile.objects.create(organization=org, tax_status="reverse_charge", tax_rate="0.19")
    running_hours(org, world, OCT_START, 2)
    close_through(NOV_START)
    invoice = finalize(invoicing.invoice_draft_refresh(org, OCT))
    assert invoice.tax == 0 and invoice.total == Decimal("7.00")
    text = pdf_text(invoice)
    assert "Reverse charge" in text and "Tax (reverse charge)" in text
    assert "IBAN DE89 3704 0044 0532 0130 00" in text
    grouped = " ".join(
        invoice.payment_reference[i : i + 4] for i in range(0, len(invoice.payment_reference), 4)
    )
    assert grouped in text


@pytest.mark.parametrize("mode", ["invoiced", "prepaid"])
def test_a_zero_amount_invoice_asks_for_nothing_in_its_pdf_email_and_e_invoice(
    world, mode, django_capture_on_commit_callbacks
):
    """Usage that rounds to 0.00 gives an invoice of 0.00: neither its PDF nor its email asks
    for a transfer, and its e-invoice does not claim it was paid from credits."""
    from billing.finance.einvoice import invoice_cii, invoice_ubl

    org = world.org
    org.billing_mode = mode
    org.save(update_fields=["billing_mode"])
    running_hours(org, world, OCT_START, 1, seconds=1)  # 3.50/h for one second
    close_through(NOV_START)
    with django_capture_on_commit_callbacks(execute=True):
        invoice = finalize(invoicing.invoice_draft_refresh(org, OCT))
    assert invoice.total == 0 and invoice.amount_due == 0 and invoice.lines.count() == 1
    assert invoice.status == "paid"  # nothing is left open, awaiting a transfer of 0.00
    assert not invoicing.invoice_overdue(org, now=AFTER_CLOSE + timedelta(days=60))
    text = pdf_text(invoice)
    assert "Nothing to pay" in text
    assert "transfer" not in text.lower() and "How to pay" not in text
    assert "Settled from prepaid credits" not in text
    body = mail.outbox[-1].body
    assert "There is nothing to pay." in body and "bank transfer" not in body
    for xml in (invoice_cii(invoice), invoice_ubl(invoice)):
        assert b"Nothing is due: the invoice total is zero." in xml
        assert b"Paid from prepaid credits" not in xml


# --- the property ---------------------------------------------------------------------------------

# Up to 999 with 12 places: 15 significant digits, which SQLite (floating point) keeps exactly.
ratings = st.lists(
    st.decimals(min_value=0, max_value=999, places=12, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    amounts=ratings,
    rate=st.decimals(min_value=0, max_value="0.9999", places=4),
    split=st.integers(1, 4),
)
def test_total_is_the_sum_of_the_lines_plus_tax_for_any_ratings(world, amounts, rate, split):
    Invoice.objects.filter(status="draft").delete()
    UsageRating.objects.all().delete()
    UsageRecord.objects.all().delete()
    org = world.org
    BillingProfile.objects.update_or_create(organization=org, defaults={"tax_rate": rate})
    types = list(world.types.values())[:split]
    for i, amount in enumerate(amounts):
        rec = record(
            org,
            COMPUTE,
            OCT_START + i * H,
            3600,
            instance_type=types[i % len(types)],
            region=world.region,
        )
        UsageRating.objects.create(usage_record=rec, amount=amount, currency="USD")
    lines = invoicing.usage_lines(org, OCT, "USD")
    rounded = [money_round(line.exact_amount, "USD") for line in lines]
    totals = invoicing.invoice_totals(rounded, currency="USD", tax_status="standard", tax_rate=rate)
    assert len(lines) == min(split, len(amounts))
    assert sum(line.exact_amount for line in lines) == sum(amounts)
    assert totals.subtotal == sum(rounded)
    assert totals.tax == money_round(totals.subtotal * rate, "USD")
    assert totals.total == totals.subtotal + totals.tax
    # the per-line rounding never drifts more than half a cent a line from the exact sum
    assert abs(totals.subtotal - sum(amounts)) <= Decimal("0.005") * len(lines)
    with time_machine.travel(OCT_START + 40 * H, tick=False):
        invoice = invoicing.invoice_draft_refresh(org, OCT)
    assert [line.amount for line in invoice.lines.all()] == rounded
    assert (invoice.subtotal, invoice.tax, invoice.total) == (
        totals.subtotal,
        totals.tax,
        totals.total,
    )


def test_the_total_check_holds_where_floating_point_sums_differ(world):
    """0.67 + 0.02 is not 0.69 in floating point (how SQLite keeps decimals): the database's
    check compares minor units, so the invoice is accepted on SQLite as on PostgreSQL."""
    org = world.org
    BillingProfile.objects.create(organization=org, tax_rate=Decimal("0.0224"))
    rec = record(
        org, COMPUTE, OCT_START, 3600, instance_type=world.types["gpu_1x_h200"], region=world.region
    )
    UsageRating.objects.create(usage_record=rec, amount=Decimal("0.665"), currency="USD")
    invoice = invoicing.invoice_draft_refresh(org, OCT)
    assert (invoice.subtotal, invoice.tax, invoice.total) == (
        Decimal("0.67"),
        Decimal("0.02"),
        Decimal("0.69"),
    )


def test_the_hourly_task_keeps_this_months_drafts_current(world):
    org, idle = world.org, factories.organization()
    running_hours(org, world, OCT_START, 3)
    with time_machine.travel(OCT_START + 5 * H, tick=False):
        assert invoicing.drafts_refresh() == 1
        draft = Invoice.objects.get(organization=org, period_start=OCT)
        assert draft.status == "draft" and draft.subtotal == Decimal("10.50")
        running_hours(org, world, OCT_START + 3 * H, 1)
        assert invoicing.drafts_refresh() == 1
    draft.refresh_from_db()
    assert draft.subtotal == Decimal("14.00")
    assert Invoice.objects.filter(organization=org).count() == 1
    assert not Invoice.objects.filter(organization=idle).exists()
