"""Billing demo data for ``manage.py load_demo_data``: last month of the demo organisation.

Two instances that ran (and one that was stopped for a week, its boot disk kept) and a 500 GB
volume in the previous calendar month, written as they would have been: instance rows with
their lifecycle events, a volume row, and the hours closed into usage records by the metering
services; a 500 top-up; the usage rated and debited; and that month's invoice finalized, with
its PDF stored. Safe to run again: nothing is created twice, and a finalized month is left as
it is.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.invoicing import services as invoicing
from billing.ledger.services import ledger_post
from billing.models import EntryKind, Invoice, InvoiceKind, InvoiceStatus
from portal.accounts.models import Organization
from portal.accounts.types import Actor
from portal.errors import PortalError

REGION = "us-east-1"
TOP_UP = Decimal(500)
# name, instance type (first one priced in the region), lifecycle steps: (state, day, hh:mm)
HISTORY = [
    (
        "llm-finetune",
        ("gpu_1x_h200_sxm", "gpu_1x_h100_sxm5", "gpu_1x_h100_pcie"),
        [
            ("pending", 3, "09:00"),
            ("provisioning", 3, "09:01"),
            ("running", 3, "09:04"),
            ("stopping", 4, "01:04"),
            ("stopped", 4, "01:06"),
            ("starting", 10, "09:00"),
            ("running", 10, "09:03"),
            ("terminating", 11, "09:03"),
            ("terminated", 11, "09:05"),
        ],
    ),
    (
        "notebook",
        ("mig_h200_1g_18gb", "mig_h100_1g_10gb", "gpu_1x_a10"),
        [
            ("pending", 12, "08:00"),
            ("provisioning", 12, "08:01"),
            ("running", 12, "08:03"),
            ("terminating", 17, "08:03"),
            ("terminated", 17, "08:04"),
        ],
    ),
]
VOLUME = ("datasets", 500, (2, "00:00"), (28, "00:00"))


def _at(month_start: datetime, day: int, clock: str) -> datetime:
    hours, minutes = (int(part) for part in clock.split(":"))
    return month_start + timedelta(days=day - 1, hours=hours, minutes=minutes)


def _priced_type(names, region, currency: str, start: datetime):
    """The first of ``names`` sold in the region and currency; its current price is put in
    force from the start of the demo month if the catalog (loaded now) has none by then."""
    from portal.catalog import services as catalog
    from portal.catalog.models import InstanceType

    for name in names:
        instance_type = InstanceType.objects.filter(name=name).first()
        if instance_type is None:
            continue
        current = catalog.price_in_force(
            instance_type=instance_type, region=region, currency=currency
        )
        if current is None:
            continue
        if (
            catalog.price_in_force(
                instance_type=instance_type, region=region, currency=currency, at=start
            )
            is None
        ):
            catalog.price_set(
                instance_type=instance_type,
                region=region,
                currency=currency,
                on_demand_per_hour=current.on_demand_per_hour,
                spot_per_hour=current.spot_per_hour,
                effective_from=start,
                allow_past=True,
            )
        return instance_type
    return None


@transaction.atomic
def _history(organization: Organization, start: datetime) -> str | None:
    """Last month's instances, their events and the volume (once). None when it is there."""
    from portal.catalog.models import Image, Region
    from portal.compute.models import Instance, InstanceEvent, Volume

    end = invoicing.month_bounds(start.date())[1]
    if Instance.objects.filter(
        organization=organization, name=HISTORY[0][0], created_at__gte=start, created_at__lt=end
    ).exists():
        return None
    region = Region.objects.filter(code=REGION).first()
    image = Image.objects.filter(is_default=True).first() or Image.objects.first()
    if region is None or image is None:
        return f"no region {REGION} or no image (load the demo catalog first)"
    types = [_priced_type(names, region, organization.currency, start) for _n, names, _s in HISTORY]
    for (_name, names, _steps), instance_type in zip(HISTORY, types, strict=True):
        if instance_type is None:
            return f"none of {', '.join(names)} is sold in {REGION} in {organization.currency}"
    for (name, _names, steps), instance_type in zip(HISTORY, types, strict=True):
        moments = [(_at(start, day, clock), state) for state, day, clock in steps]
        instance = Instance.objects.create(
            organization=organization,
            name=name,
            instance_type=instance_type,
            region=region,
            image=image,
            disk_gb=settings.COMPUTE_BOOT_DISK_GB,
            state=moments[-1][1],
            desired_state="terminated",
            backend=settings.PROVISIONING_BACKEND,
            created_at=moments[0][0],
            state_changed_at=moments[-1][0],
            terminated_at=moments[-1][0],
        )
        previous = ""
        for moment, state in moments:
            InstanceEvent.objects.create(
                instance=instance,
                created_at=moment,
                from_state=previous,
                to_state=state,
                actor_label="demo",
                reason="Demo history",
            )
            previous = state
    name, size, created, deleted = VOLUME
    Volume.objects.create(
        organization=organization,
        region=region,
        name=name,
        size_gb=size,
        state="deleted",
        created_at=_at(start, *created),
        deleted_at=_at(start, *deleted),
    )
    return None


def load_billing_demo(organization: Organization, *, now: datetime | None = None) -> str:
    """Give the organisation last month's usage, a top-up and that month's finalized invoice.
    Returns one line saying what it did."""
    from portal.metering.models import UsageRecord
    from portal.metering.services import (
        closed_until,
        first_open_hour,
        usage_close_hours,
        usage_rebuild,
    )

    now = now or timezone.now()
    month = invoicing.previous_month(now)
    start, end = invoicing.month_bounds(month)
    skipped = "Billing demo skipped: "
    done = (
        Invoice.objects.filter(
            organization=organization, kind=InvoiceKind.INVOICE, period_start=month
        )
        .exclude(status=InvoiceStatus.DRAFT)
        .first()
    )
    if done is not None:
        return f"Billing demo: invoice {done.number} for {month:%B %Y} ({done.total} {done.currency}) is there."
    problem = _history(organization, start)
    if problem:
        return skipped + problem
    ledger_post(
        organization=organization,
        kind=EntryKind.TOP_UP,
        amount=TOP_UP,
        idempotency_key=f"demo-top-up:{organization.pk}:{month:%Y-%m}",
        description=f"Top-up by bank transfer (demo data for {month:%B %Y})",
        actor_label="demo",
    )
    closed = closed_until()
    if closed is not None and closed > start:
        # Hours of that month were closed before the history was written: recompute them.
        usage_rebuild(start=start, end=min(closed, end))
    try:
        usage_close_hours(start=first_open_hour(now), end=end)  # the month at once
        invoicing.usage_debit_all(
            UsageRecord.objects.filter(
                organization=organization, hour_start__gte=start, hour_start__lt=end
            )
        )
        invoice = invoicing.invoice_draft_refresh(organization, month)
        invoice = invoicing.invoice_finalize(
            invoice, actor=Actor.system(organization), notify=False
        )
    except PortalError as exc:
        return skipped + exc.message
    return (
        f"Billing demo: {month:%B %Y} usage, a {TOP_UP} {invoice.currency} top-up and invoice "
        f"{invoice.number} ({invoice.total} {invoice.currency}, {invoice.get_status_display().lower()})"
    )
