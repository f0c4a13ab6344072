"""Billing scenarios: a world with USD prices from September 2026, usage records of October,
closing hours, finalizing and closing months, finance actors, and one invoiced October with
payments, a credit note, a refund and a draft (``october_register``).

Amounts follow the tests' worked examples: 3.50 USD/h for ``gpu_1x_h200``."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import time_machine
from django.contrib.auth.models import Permission

from billing.invoicing import services as invoicing
from billing.ledger.services import ledger_post, usage_debit_pending
from billing.models import BillingProfile, EntryKind
from portal.accounts.types import Actor
from portal.catalog import services as catalog_services
from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, VOLUME
from portal.metering.models import ClosedHour, Meter, UsageRecord
from portal.metering.services import builtin_meters
from tests.factories import accounts as factories
from tests.factories.compute import World

D = Decimal
H = timedelta(hours=1)
OCT = date(2026, 10, 1)
OCT_START = datetime(2026, 10, 1, tzinfo=UTC)
NOV_START = datetime(2026, 11, 1, tzinfo=UTC)
AFTER_CLOSE = NOV_START + timedelta(minutes=30)


def make_world() -> World:
    """An organisation, a region with H200 hosts and USD prices from 1 September 2026."""
    with time_machine.travel(datetime(2026, 9, 1, tzinfo=UTC), tick=False):
        return World()


def make_org(currency="USD", **extra):
    return factories.organization(currency=currency, **extra)


def record(org, meter_key, hour, quantity, *, instance_type=None, region=None, subject="1"):
    meter = builtin_meters().get(meter_key) or Meter.objects.get(key=meter_key)
    return UsageRecord.objects.create(
        organization=org,
        subject_type="external"
        if meter_key not in (COMPUTE, BOOT_DISK, VOLUME)
        else ("volume" if meter_key == VOLUME else "instance"),
        subject_id=subject,
        meter=meter,
        hour_start=hour,
        quantity=Decimal(quantity),
        unit=meter.unit,
        instance_type_id=instance_type.pk if instance_type else None,
        region_id=region.pk if region else None,
    )


def running_hours(org, world, start, hours, *, type_name="gpu_1x_h200", subject="1", seconds=3600):
    for i in range(hours):
        record(
            org,
            COMPUTE,
            start + i * H,
            seconds,
            instance_type=world.types[type_name],
            region=world.region,
            subject=subject,
        )


def close_through(end):
    """Metering has closed every hour before ``end`` (records here are made directly)."""
    ClosedHour.objects.get_or_create(hour_start=end - H)


def debit_all():
    while usage_debit_pending().debited:
        pass


def finalize(invoice, when=AFTER_CLOSE, **kwargs):
    with time_machine.travel(when, tick=False):
        return invoicing.invoice_finalize(
            invoice, actor=Actor.system(invoice.organization), **kwargs
        )


def close_month(month=OCT, when=AFTER_CLOSE):
    with time_machine.travel(when, tick=False):
        return invoicing.month_close(month)


def finance(org=None) -> Actor:
    return Actor.for_operator(factories.user(is_staff=True), org)


def issued(world, *, mode="invoiced", hours=10, tax="0.20", currency="USD"):
    org = world.org
    if org.billing_mode != mode:
        org.billing_mode = mode
        org.save(update_fields=["billing_mode"])
    BillingProfile.objects.update_or_create(
        organization=org, defaults={"tax_rate": Decimal(tax), "payment_terms_days": 14}
    )
    running_hours(org, world, OCT_START, hours)
    close_through(NOV_START)
    return finalize(invoicing.invoice_draft_refresh(org, OCT))


def finance_staff(email=None, **extra):
    user = factories.user(email, is_staff=True, **extra)
    user.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    return user


def october_register() -> dict:
    """October 2026, invoiced in November:

    - ``usd``: invoiced, 10 h at 3.50 + 20 % tax = 42.00, credited 10.00 (-12.00) on 2 Nov,
      the remaining 30.00 paid by bank on 5 Nov;
    - ``late``: invoiced, 2 h at 3.50 = 7.00, no tax, due 15 Nov and unpaid;
    - ``cny``: prepaid, a 1000 CNY top-up on 2 Nov, 5 h at 24.85 + 6 % = 131.71 paid from
      credits, 100 CNY refunded on 6 Nov;
    - ``drafty``: a draft of October never finalized."""
    world = make_world()
    usd = world.org
    usd.billing_mode = "invoiced"
    usd.save(update_fields=["billing_mode"])
    BillingProfile.objects.create(organization=usd, tax_rate=D("0.20"), payment_terms_days=14)
    late = make_org(billing_mode="invoiced", name="Late Payer", country="FR", credit_limit=None)
    BillingProfile.objects.create(organization=late, tax_rate=0, payment_terms_days=14)
    cny = make_org(currency="CNY", name="深圳算力科技有限公司", country="CN", credit_amount=None)
    BillingProfile.objects.create(organization=cny, tax_rate=D("0.06"))
    catalog_services.price_set(
        instance_type=world.types["gpu_1x_h200"],
        region=world.region,
        currency="CNY",
        on_demand_per_hour="24.85",
        effective_from=datetime(2026, 9, 1, tzinfo=UTC),
        allow_past=True,
    )
    drafty = make_org(name="Drafty", credit_amount=None)
    running_hours(usd, world, OCT_START, 10)
    running_hours(late, world, OCT_START, 2, subject="2")
    running_hours(cny, world, OCT_START, 5, subject="3")
    running_hours(drafty, world, OCT_START, 1, subject="4")
    close_through(NOV_START)
    with time_machine.travel(OCT_START + timedelta(days=20), tick=False):
        draft = invoicing.invoice_draft_refresh(drafty, OCT)
    invoices = {}
    for org in (usd, late, cny):
        with time_machine.travel(AFTER_CLOSE, tick=False):
            draft_of_org = invoicing.invoice_draft_refresh(org, OCT)
        invoices[org.slug] = finalize(draft_of_org, notify=False)
    with time_machine.travel(datetime(2026, 11, 2, 9, tzinfo=UTC), tick=False):
        ledger_post(
            organization=cny,
            kind=EntryKind.TOP_UP,
            amount="1000",
            idempotency_key="test-top-up",
            description="Top-up by card",
            actor_label="test",
        )
        note = invoicing.credit_note_create(
            invoices[usd.slug], actor=finance(usd), amount="10.00", reason="Outage", notify=False
        )
    with time_machine.travel(datetime(2026, 11, 5, 9, tzinfo=UTC), tick=False):
        invoicing.invoice_mark_paid(invoices[usd.slug], reference="BANK-1", actor=finance(usd))
    with time_machine.travel(datetime(2026, 11, 6, 9, tzinfo=UTC), tick=False):
        ledger_post(
            organization=cny,
            kind=EntryKind.REFUND,
            amount="-100",
            idempotency_key="test-refund",
            description="Refund of a top-up",
            actor_label="test",
        )
    return {
        "usd": invoices[usd.slug],
        "late": invoices[late.slug],
        "cny": invoices[cny.slug],
        "note": note,
        "draft": draft,
        "orgs": {"usd": usd, "late": late, "cny": cny, "drafty": drafty},
    }
