"""Monthly invoices and credit notes: the running draft, finalizing, payment, void, credit notes
and the month close.

One invoice per organisation per calendar month (UTC), in the organisation's currency. Its lines
come from the month's usage records, priced by their ``UsageRating`` (records not rated yet are
priced with the same ``Rater`` and quantization, so a draft shown mid-month is what the invoice
will say):

- compute: one line per instance type and region, in hours at the hourly price;
- no-GPU mode: one line per instance type and region ("No-GPU mode: gpu_1x_h200 in ..."), in
  hours at the region's no-GPU price;
- storage: one line per meter (boot disks of stopped instances, volumes) and region, in GB-months
  at the price per GB-month;
- other meters (operator-defined): one line per meter, in the meter's unit.

**Rounding** (``portal.money.money_round``, the one rule): a line's ``exact_amount`` is the sum of
its records' full-precision ratings; its ``amount`` is that sum rounded once to the currency's
minor unit (2 places), half-up (ties away from zero). ``subtotal`` is the sum of the line amounts,
exactly; ``tax`` is ``money_round(subtotal * tax_rate)`` for the standard tax status and zero
otherwise; ``total = subtotal + tax`` (a database constraint holds it).

**A price change within the month** splits the line: one line per price in force, each with its
unit price and a description saying from/until when that price applied (e.g. "gpu_1x_h200 in
us-east-1, price until 2026-10-15 14:00 UTC"). So ``unit_price`` is always the one price of the
line's usage (prices change on hour boundaries for rating, so the split is by hour).

**Credit notes** carry negative amounts: their lines, subtotal, tax and total are negative, so
the invoices and credit notes of a period add up to what is owed. They are finalized at once in
the ``CN`` series, and credit the organisation's ledger (``adjustment``, positive).

**Ledger** (``billing.ledger.services``): usage is debited record by record at full precision as it is
rated. Finalizing makes the month's usage debits equal the invoice's usage total to the cent with
one ``rounding`` entry, and debits the tax (``tax``). Prepaid organisations are settled from their
credits at once (the invoice is paid); invoiced organisations owe ``amount_due`` until
``invoice_mark_paid`` posts the ``payment``. So, in both modes, the month's usage debits plus the
rounding plus the tax are exactly minus the invoice total, and a paid invoiced organisation's
invoice nets to zero in its ledger.

**Freeze**: migration ``0003_invoice_freeze`` installs database triggers that refuse changes to a
finalized invoice's amounts, number, parties and PDF, and to its lines; finalizing therefore
writes the number and amounts in the same UPDATE that moves it out of ``draft`` (a single
finalize and a credit note the PDF too). The month close leaves the PDF to workers after
commit: the trigger lets an issued document's PDF be stored once (``documents.invoice_pdf_store``,
rendered from the document as issued), and refuses any change to it after.

**The month close** issues a month's invoices set-based (``billing.invoicing.close``): the same
lines, numbers, ledger entries and audit rows as finalizing each invoice, from grouped queries
and bulk writes.

Locks follow the house order: organisation, then the invoice, then the document sequence, then
the ledger account (inside ``ledger_post``).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.ledger.services import account_for, ledger_post, usage_debit_pending
from billing.models import (
    DocumentSequence,
    EntryKind,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    LedgerEntry,
    LineKind,
    TaxStatus,
)
from portal.accounts.locks import lock_organization
from portal.accounts.models import BillingMode, Organization
from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.background import enqueue_on_commit
from portal.errors import Conflict, ErrorCode, InvalidInput, PermissionDenied
from portal.metering.lifecycle_usage import BOOT_DISK, HOUR
from portal.metering.models import Meter, UsageRecord
from portal.metering.rating import Rater, Usage, pricing_for
from portal.money import at_rating_precision, minor_units, money_round, round_half_up
from portal.sql import rows

logger = logging.getLogger(__name__)

QUANTITY_PLACES = 6  # InvoiceLine.quantity has 6 decimal places


# --- months ---------------------------------------------------------------------------------


def month_start(value: date | datetime | str | None = None) -> date:
    """The first day of the month of ``value`` (a date, an aware datetime taken in UTC, or
    'YYYY-MM'); the current UTC month when empty."""
    if value is None:
        value = timezone.now()
    if isinstance(value, str):
        try:
            parsed = datetime.strptime(value.strip(), "%Y-%m")
        except ValueError:
            raise InvalidInput(
                _("'%(value)s' is not a month; write it as YYYY-MM, e.g. 2026-10.")
                % {"value": value},
                code=BillingErrorCode.MONTH_INVALID,
            ) from None
        return date(parsed.year, parsed.month, 1)
    if isinstance(value, datetime):
        value = value.astimezone(UTC).date() if timezone.is_aware(value) else value.date()
    return value.replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(now: datetime | None = None) -> date:
    first = month_start(now or timezone.now())
    return (first - timedelta(days=1)).replace(day=1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[start, end) of the month as aware UTC datetimes."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_day = next_month(month)
    return start, datetime(end_day.year, end_day.month, 1, tzinfo=UTC)


# --- exact sums -----------------------------------------------------------------------------


def _exact_sum(queryset: QuerySet, field_name: str) -> Decimal:
    """Sum of a decimal column, exactly. PostgreSQL sums ``numeric`` exactly; SQLite keeps
    decimals as floating point, so there the values are added in Python."""
    if connection.vendor == "postgresql":
        return queryset.aggregate(total=Sum(field_name))["total"] or Decimal(0)
    return sum(
        (Decimal(v) for v in queryset.values_list(field_name, flat=True) if v is not None),
        Decimal(0),
    )


# --- building lines -------------------------------------------------------------------------


@dataclass
class _Group:
    """The month's usage of one (meter, instance type, region)."""

    meter_id: int
    instance_type_id: int | None
    region_id: int | None
    quantity: Decimal = Decimal(0)
    rated: Decimal = Decimal(0)
    unrated: int = 0


@dataclass
class _Run:
    """The part [start, end) of the month in which one unit price applied (it starts on an
    hour, or at the moment within one a price took effect)."""

    start: datetime
    end: datetime
    price: Decimal


@dataclass
class _Piece:
    quantity: Decimal = Decimal(0)
    exact: Decimal = Decimal(0)
    records: int = 0


@dataclass
class LineDraft:
    kind: str
    description: str
    meter_key: str
    instance_type_id: int | None
    region_id: int | None
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    exact_amount: Decimal
    sort_key: tuple = field(default=())


def _group_filter(group: _Group) -> Q:
    condition = Q(meter_id=group.meter_id)
    for name in ("instance_type_id", "region_id"):
        value = getattr(group, name)
        condition &= Q(**{name: value}) if value is not None else Q(**{f"{name}__isnull": True})
    return condition


def _usage_groups(records: QuerySet) -> list[_Group]:
    """The records grouped by (meter, instance type, region): quantity, rated amount, and how
    many are not rated yet. One query (PostgreSQL sums exactly; on SQLite, Python does)."""
    if connection.vendor == "postgresql":
        rows = (
            records.order_by()
            .values("meter_id", "instance_type_id", "region_id")
            .annotate(
                quantity_sum=Sum("quantity"),
                rated_sum=Sum("rating__amount"),
                unrated=Count("pk", filter=Q(rating__isnull=True)),
            )
        )
        return [
            _Group(
                meter_id=row["meter_id"],
                instance_type_id=row["instance_type_id"],
                region_id=row["region_id"],
                quantity=row["quantity_sum"] or Decimal(0),
                rated=row["rated_sum"] or Decimal(0),
                unrated=row["unrated"],
            )
            for row in rows
        ]
    groups: dict[tuple, _Group] = {}
    for meter_id, type_id, region_id, quantity, rated in records.order_by().values_list(
        "meter_id", "instance_type_id", "region_id", "quantity", "rating__amount"
    ):
        key = (meter_id, type_id, region_id)
        group = groups.get(key) or groups.setdefault(key, _Group(meter_id, type_id, region_id))
        group.quantity += quantity
        if rated is None:
            group.unrated += 1
        else:
            group.rated += rated
    return list(groups.values())


class _LineBuilder:
    """Prices one month of one currency: one Rater (the price history, loaded once for the
    invoice), and which prices change within the month."""

    def __init__(self, currency: str, start: datetime, end: datetime) -> None:
        self.currency, self.start, self.end = currency, start, end
        self.rater = Rater(currency)
        self._runs: dict[tuple, list[_Run]] = {}

    def unit_price(self, meter: Meter, group: _Group, hour: datetime) -> Decimal:
        """The price of one invoiced unit (an hour, a GB-month, a unit of the meter)."""
        pricing = pricing_for(meter.key)
        per_unit = pricing.per_unit(self.rater, _usage(meter, group, hour))
        return at_rating_precision(per_unit * pricing.factor)

    def runs(self, meter: Meter, group: _Group) -> list[_Run]:
        """The month cut where the unit price changes (one run when it is constant)."""
        key = (meter.pk, group.instance_type_id, group.region_id)
        if key in self._runs:
            return self._runs[key]
        # The price may change within the month when a price takes effect in it, or in the
        # hour before (the hour a first price appears is charged at it). Otherwise it is the
        # same in every hour of the month. A price taking effect within an hour starts a run
        # at that moment, as the hour's records are cut there (``rating.PriceCuts``).
        changes = pricing_for(meter.key).changes_in(
            self.rater, _usage(meter, group, self.start), self.start - HOUR, self.end
        )
        if not changes:
            runs = [_Run(self.start, self.end, self.unit_price(meter, group, self.start))]
        else:
            points = {self.start + i * HOUR for i in range(int((self.end - self.start) / HOUR))}
            points.update(moment for moment in changes if self.start <= moment < self.end)
            ordered = sorted(points)
            runs = []
            for moment, until in zip(ordered, [*ordered[1:], self.end], strict=True):
                price = self.unit_price(meter, group, moment)
                if runs and runs[-1].price == price:
                    runs[-1].end = until
                else:
                    runs.append(_Run(moment, until, price))
        self._runs[key] = runs
        return runs

    def pieces(
        self, records: QuerySet, meter: Meter, group: _Group, runs: list[_Run]
    ) -> list[_Piece]:
        """Quantity and exact amount of the group in each run. Rated records count with their
        rating; records not rated yet are priced now as ``usage_debit_pending`` will."""
        pieces = [_Piece() for _ in runs]
        if len(runs) == 1:
            pieces[0].quantity, pieces[0].exact = group.quantity, group.rated
            if group.unrated:
                for record in records.filter(_group_filter(group), rating__isnull=True):
                    record.meter = meter
                    pieces[0].exact += at_rating_precision(self.rater.cost(record))
            return pieces
        starts = [run.start for run in runs]
        in_group = records.filter(_group_filter(group))
        unrated: list[int] = []
        if connection.vendor == "postgresql" and len(runs) <= 24:
            # one row of sums per run, exact (numeric), instead of every record
            sums = {}
            for i, run in enumerate(runs):
                within = Q(period_start__gte=run.start, period_start__lt=run.end)
                sums[f"q{i}"] = Sum("quantity", filter=within)
                sums[f"a{i}"] = Sum("rating__amount", filter=within)
                sums[f"n{i}"] = Count("pk", filter=within)
                sums[f"u{i}"] = Count("pk", filter=within & Q(rating__isnull=True))
            row = in_group.aggregate(**sums)
            for i, piece in enumerate(pieces):
                piece.quantity = row[f"q{i}"] or Decimal(0)
                piece.exact = row[f"a{i}"] or Decimal(0)
                piece.records = row[f"n{i}"]
            if any(row[f"u{i}"] for i in range(len(runs))):
                unrated = list(in_group.filter(rating__isnull=True).values_list("pk", flat=True))
        else:
            for pk, hour, quantity, rated in in_group.values_list(
                "pk", "period_start", "quantity", "rating__amount"
            ):
                piece = pieces[bisect.bisect_right(starts, hour) - 1]
                piece.quantity += quantity
                piece.records += 1
                if rated is None:
                    unrated.append(pk)
                else:
                    piece.exact += rated
        if unrated:
            for record in records.filter(pk__in=unrated):
                record.meter = meter
                piece = pieces[bisect.bisect_right(starts, record.period_start) - 1]
                piece.exact += at_rating_precision(self.rater.cost(record))
        return pieces


def _usage(meter: Meter, group: _Group, hour: datetime) -> Usage:
    return Usage(meter.pk, hour, group.instance_type_id, group.region_id)


@dataclass(frozen=True)
class _LineStyle:
    """How a group's lines read: line kind, unit, description and place on the invoice."""

    kind: str
    unit: str
    description: str
    rank: int
    sort_name: str


def _compute_style(meter: Meter, group: _Group, instance_type, where: str) -> _LineStyle:
    name = instance_type.name if instance_type else f"instance type {group.instance_type_id}"
    return _LineStyle(LineKind.COMPUTE, "hour", f"{name}{where}", 0, name)


def _no_gpu_style(meter: Meter, group: _Group, instance_type, where: str) -> _LineStyle:
    # beside the type's own compute line, and never read as it
    name = instance_type.name if instance_type else f"instance type {group.instance_type_id}"
    return _LineStyle(LineKind.COMPUTE, "hour", f"No-GPU mode: {name}{where}", 0, f"{name} ~")


def _storage_style(meter: Meter, group: _Group, instance_type, where: str) -> _LineStyle:
    if meter.key != BOOT_DISK:
        return _LineStyle(LineKind.STORAGE, "GB-month", f"Volumes{where}", 1, "1")
    # boot disks are grouped per instance type: each line names its type, so no two read alike
    name = f" {instance_type.name}" if instance_type else ""
    what = f"Boot disks of stopped{name} instances"
    return _LineStyle(LineKind.STORAGE, "GB-month", f"{what}{where}", 1, f"0{name}")


def _meter_style(meter: Meter, group: _Group, instance_type, where: str) -> _LineStyle:
    return _LineStyle(LineKind.METER, meter.unit[:20], f"{meter.name} ({meter.key})", 2, meter.key)


# one line style per pricing strategy (``portal.metering.rating.PRICING``)
LINE_STYLES = {
    "compute": _compute_style,
    "no_gpu": _no_gpu_style,
    "storage": _storage_style,
    "meter": _meter_style,
}


def _moment(value: datetime) -> str:
    if value == value.replace(hour=0, minute=0, second=0, microsecond=0):
        return f"{value:%Y-%m-%d}"
    if value.second == value.microsecond == 0:
        return f"{value:%Y-%m-%d %H:%M} UTC"
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _run_label(run: _Run, start: datetime, end: datetime) -> str:
    if run.start <= start:
        return f"price until {_moment(run.end)}"
    if run.end >= end:
        return f"price from {_moment(run.start)}"
    return f"price from {_moment(run.start)} until {_moment(run.end)}"


def usage_lines(organization: Organization, month: date, currency: str) -> list[LineDraft]:
    """The invoice lines of the organisation's usage in the month, in invoice order."""
    return _usage_lines(organization, month, currency)[0]


class _Names:
    """The meters, instance types and regions lines are named after, loaded in bulk as they
    are first needed (one query per kind for a draft, a few for a whole month close)."""

    def __init__(self) -> None:
        self.meters: dict[int, Meter] = {}
        self.types: dict = {}
        self.regions: dict = {}

    def load(self, groups) -> _Names:
        from portal.catalog.models import InstanceType, Region

        for attribute, model, wanted in (
            ("meters", Meter, {g.meter_id for g in groups}),
            ("types", InstanceType, {g.instance_type_id for g in groups} - {None}),
            ("regions", Region, {g.region_id for g in groups} - {None}),
        ):
            known = getattr(self, attribute)
            missing = wanted - known.keys()
            if missing:
                known.update(model.objects.in_bulk(missing))
        return self


def _usage_lines(
    organization: Organization, month: date, currency: str
) -> tuple[list[LineDraft], int]:
    """The lines, and how many of the month's records are not rated yet."""
    start, end = month_bounds(month)
    records = UsageRecord.objects.filter(
        organization=organization, hour_start__gte=start, hour_start__lt=end
    )
    groups = _usage_groups(records)
    unrated = sum(group.unrated for group in groups)
    if not groups:
        return [], unrated
    builder = _LineBuilder(currency, start, end)
    names = _Names().load(groups)
    priced = []
    for group in groups:
        meter = names.meters[group.meter_id]
        runs = builder.runs(meter, group)
        priced.append((group, runs, builder.pieces(records, meter, group, runs)))
    return assemble_lines(priced, names, start, end), unrated


def assemble_lines(
    priced: list[tuple[_Group, list[_Run], list[_Piece]]],
    names: _Names,
    start: datetime,
    end: datetime,
) -> list[LineDraft]:
    """The lines of one invoice from its groups, each with its price runs and the quantity and
    exact amount in each run, in invoice order. The one place lines are worded and ordered:
    the running draft and the month close (``billing.invoicing.close``) both call it."""
    lines: list[LineDraft] = []
    for group, runs, pieces in priced:
        meter = names.meters[group.meter_id]
        instance_type = names.types.get(group.instance_type_id)
        region = names.regions.get(group.region_id)
        used = [(run, piece) for run, piece in zip(runs, pieces, strict=True)]
        if len(runs) > 1:
            used = [(run, piece) for run, piece in used if piece.records]
        pricing = pricing_for(meter.key)
        factor = pricing.factor
        region_code = region.code if region else ""
        where = f" in {region_code}" if region_code else ""
        style = LINE_STYLES[pricing.kind](meter, group, instance_type, where)
        kind, unit, rank = style.kind, style.unit, style.rank
        description, sort_name = style.description, style.sort_name
        for run, piece in used:
            label = f", {_run_label(run, start, end)}" if len(used) > 1 else ""
            lines.append(
                LineDraft(
                    kind=kind,
                    description=(description + label)[:300],
                    meter_key=meter.key,
                    instance_type_id=group.instance_type_id,
                    region_id=group.region_id,
                    quantity=round_half_up(piece.quantity / factor, QUANTITY_PLACES),
                    unit=unit,
                    unit_price=run.price,
                    exact_amount=piece.exact,
                    sort_key=(rank, sort_name, region_code, run.start),
                )
            )
    lines.sort(key=lambda line: line.sort_key)
    return lines


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def invoice_totals(
    amounts: list[Decimal], *, currency: str, tax_status: str, tax_rate: Decimal
) -> Totals:
    """Subtotal (the exact sum of the rounded line amounts), tax and total."""
    subtotal = sum(amounts, Decimal(0))
    tax = (
        money_round(subtotal * tax_rate, currency)
        if tax_status == TaxStatus.STANDARD
        else Decimal(0)
    )
    return Totals(subtotal=subtotal, tax=tax, total=subtotal + tax)


def _tax_terms(organization: Organization) -> tuple[str, Decimal, int]:
    """(tax status, tax rate, payment terms in days) from the billing profile (no profile:
    standard rate 0, the default terms)."""
    from billing.models import BillingProfile

    return tax_terms_of(BillingProfile.objects.filter(organization=organization).first())


def tax_terms_of(profile) -> tuple[str, Decimal, int]:
    """``_tax_terms`` from a billing profile already loaded (or None)."""
    if profile is None:
        return TaxStatus.STANDARD, Decimal(0), settings.BILLING_PAYMENT_TERMS_DAYS
    return profile.tax_status, profile.tax_rate, profile.payment_terms_days


def _rebuild(invoice: Invoice) -> int:
    """Replace a draft invoice's lines and amounts with what its month's usage says now.
    Returns how many of the month's records are not rated yet (priced here as they will be)."""
    organization = invoice.organization
    tax_status, tax_rate, _terms = _tax_terms(organization)
    drafts, unrated = _usage_lines(organization, invoice.period_start, invoice.currency)
    lines = invoice_line_rows(invoice, drafts)
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(lines)
    totals = invoice_totals(
        [line.amount for line in lines],
        currency=invoice.currency,
        tax_status=tax_status,
        tax_rate=tax_rate,
    )
    invoice.billing_mode = organization.billing_mode
    invoice.tax_status, invoice.tax_rate = tax_status, tax_rate
    invoice.subtotal, invoice.tax, invoice.total = totals.subtotal, totals.tax, totals.total
    _settlement(invoice)
    invoice.updated_at = timezone.now()
    invoice.save(
        update_fields=[
            "billing_mode",
            "tax_status",
            "tax_rate",
            "subtotal",
            "tax",
            "total",
            "credits_applied",
            "amount_due",
            "updated_at",
        ]
    )
    return unrated


def invoice_line_rows(invoice: Invoice, drafts: list[LineDraft]) -> list[InvoiceLine]:
    """The invoice's lines from their drafts, numbered from 1, each rounded once."""
    return [
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            description=line.description,
            meter_key=line.meter_key,
            instance_type_id=line.instance_type_id,
            region_id=line.region_id,
            quantity=line.quantity,
            unit=line.unit,
            unit_price=line.unit_price,
            exact_amount=line.exact_amount,
            amount=money_round(line.exact_amount, invoice.currency),
        )
        for position, line in enumerate(drafts, start=1)
    ]


def _settlement(invoice: Invoice) -> None:
    """Prepaid: settled from credits (nothing due). Invoiced: the total is due."""
    if invoice.billing_mode == BillingMode.PREPAID:
        invoice.credits_applied, invoice.amount_due = invoice.total, Decimal(0)
    else:
        invoice.credits_applied, invoice.amount_due = Decimal(0), invoice.total


# --- drafts ---------------------------------------------------------------------------------


def _draft_get_or_create(organization: Organization, month: date) -> Invoice:
    """The organisation's invoice of the month, locked (created as an empty draft if there is
    none). The caller holds the organisation's lock, so two callers cannot both create it; the
    unique constraint ``billing_one_invoice_per_month`` is the backstop."""
    found = (
        Invoice.objects.select_for_update()
        .filter(organization=organization, kind=InvoiceKind.INVOICE, period_start=month)
        .first()
    )
    if found is not None:
        return found
    tax_status, tax_rate, _terms = _tax_terms(organization)
    try:
        with transaction.atomic():
            return Invoice.objects.create(
                organization=organization,
                kind=InvoiceKind.INVOICE,
                period_start=month,
                period_end=next_month(month),
                currency=account_for(organization).currency,
                billing_mode=organization.billing_mode,
                tax_status=tax_status,
                tax_rate=tax_rate,
            )
    except IntegrityError:
        return Invoice.objects.select_for_update().get(
            organization=organization, kind=InvoiceKind.INVOICE, period_start=month
        )


def drafts_refresh(now: datetime | None = None) -> int:
    """Keep this month's running drafts current for every organisation with usage in it (the
    hourly task), so customers and finance see the month build up. Returns how many."""
    now = now or timezone.now()
    month = month_start(now)
    start, end = month_bounds(month)
    with_usage = (
        UsageRecord.objects.filter(hour_start__gte=start, hour_start__lt=end)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    refreshed = 0
    for organization in Organization.objects.filter(pk__in=with_usage, deleted_at__isnull=True):
        invoice_draft_refresh(organization, month)
        refreshed += 1
    return refreshed


@transaction.atomic
def invoice_draft_refresh(organization: Organization, month: date | str | None = None) -> Invoice:
    """Build (or rebuild) the organisation's draft invoice of the month (default: this month)
    from its usage so far: lines replaced, amounts recomputed. Idempotent. A month already
    finalized is returned as it is (frozen)."""
    month = month_start(month)
    lock_organization(organization.pk)
    invoice = _draft_get_or_create(organization, month)
    invoice.organization = organization
    if invoice.status == InvoiceStatus.DRAFT:
        _rebuild(invoice)
    return invoice


# --- selectors ------------------------------------------------------------------------------


def invoice_list(
    organization: Organization, *, kind: str | None = None, include_drafts: bool = True
) -> QuerySet[Invoice]:
    """The organisation's invoices and credit notes, newest month first (without the PDFs)."""
    found = Invoice.objects.filter(organization=organization).defer("pdf")
    if kind is not None:
        found = found.filter(kind=kind)
    if not include_drafts:
        found = found.exclude(status=InvoiceStatus.DRAFT)
    return found.order_by("-period_start", "kind", "-id")


def invoice_get(organization: Organization, pk: int) -> Invoice | None:
    """One of the organisation's invoices (None for another organisation's)."""
    return Invoice.objects.filter(organization=organization, pk=pk).first()


_OVERDUE_SQL = (
    "SELECT 1 FROM billing_invoice WHERE organization_id = %s AND kind = %s AND status = %s"
    " AND due_at < %s AND amount_due > 0 LIMIT 1"
)


def invoice_overdue(organization: Organization, now: datetime | None = None) -> bool:
    """Has the organisation a finalized, unpaid invoice past its due date? (Plain SQL: every
    launch and start asks.)"""
    params = [organization.pk, InvoiceKind.INVOICE, InvoiceStatus.FINALIZED, now or timezone.now()]
    return bool(rows(_OVERDUE_SQL, params))


def month_usage_debited(organization: Organization, month: date) -> Decimal:
    """The sum of the month's usage debits in the organisation's ledger (negative)."""
    start, end = month_bounds(month)
    return _exact_sum(
        LedgerEntry.objects.filter(
            account__organization=organization,
            kind=EntryKind.USAGE,
            usage_record__hour_start__gte=start,
            usage_record__hour_start__lt=end,
        ),
        "amount",
    )


def month_rounding(organization: Organization, month: date) -> Decimal:
    """The rounding posted for the organisation's invoice of the month (0 when none)."""
    return _exact_sum(
        LedgerEntry.objects.filter(
            account__organization=organization,
            kind=EntryKind.ROUNDING,
            idempotency_key__in=[
                f"rounding:{pk}"
                for pk in Invoice.objects.filter(
                    organization=organization, kind=InvoiceKind.INVOICE, period_start=month
                ).values_list("pk", flat=True)
            ],
        ),
        "amount",
    )


# --- numbers, references, parties ------------------------------------------------------------

SERIES = {InvoiceKind.INVOICE: "INV", InvoiceKind.CREDIT_NOTE: "CN"}


def _next_number(series: str, year: int) -> str:
    """The next number of the yearly series, under the sequence's row lock: gapless, since
    the increment commits or rolls back with the document that uses it."""
    return take_numbers(series, year, 1)[0]


def take_numbers(series: str, year: int, count: int) -> list[str]:
    """The next ``count`` numbers of the yearly series, consecutive, taken under the
    sequence's row lock (held until the transaction ends, so the documents that use them
    commit or roll back with the increment: no gap, no number twice)."""
    DocumentSequence.objects.get_or_create(series=series, year=year)
    sequence = DocumentSequence.objects.select_for_update().get(series=series, year=year)
    first = sequence.last + 1
    sequence.last += count
    sequence.save(update_fields=["last"])
    return [f"{series}-{year}-{n:06d}" for n in range(first, first + count)]


def creditor_reference(number: str) -> str:
    """The ISO 11649 structured creditor reference ("RF" + 2 check digits + the number's
    letters and digits), which banks check and carry on a transfer: INV-2026-000042 gives
    RF54INV2026000042."""
    body = "".join(ch for ch in number if ch.isalnum()).upper()
    digits = "".join(str(int(ch, 36)) for ch in body + "RF00")
    return f"RF{98 - int(digits) % 97:02d}{body}"


def buyer_snapshot(organization: Organization) -> dict:
    return {
        "name": organization.name,
        "country": str(organization.country.code or ""),
        "country_name": str(organization.country.name or ""),
        "tax_id": organization.tax_id,
        "email": organization.billing_email,
        "account": organization.slug,
        "street": organization.street,
        "address_line2": organization.address_line2,
        "postcode": organization.postcode,
        "city": organization.city,
        "reference": organization.buyer_reference,
        "electronic_address": organization.electronic_address,
        "electronic_address_scheme": organization.electronic_address_scheme,
        "einvoice_profile": organization.einvoice_profile,
    }


def _require_finance(actor: Actor) -> None:
    """Invoices are issued, paid and corrected by the system, finance staff (operators in
    admin), or the payment code; never by a customer's role."""
    if not (actor.operator or actor.user is None):
        raise PermissionDenied(
            _("Only finance staff change invoices."), code=BillingErrorCode.FINANCE_ONLY
        )


def settle_at_issue(invoice: Invoice, at: datetime) -> None:
    """The status and settlement a document takes the moment it is issued: a prepaid
    organisation's invoice is paid from its credits, an invoice of nothing is paid with nothing
    due, any other is open for its total; a credit note is final. ``_issue`` applies it, and a
    PDF rendered after the issue shows the document as this left it
    (``documents.as_issued``), whatever happened to it since."""
    if invoice.kind == InvoiceKind.INVOICE:
        _settlement(invoice)
        if invoice.billing_mode == BillingMode.PREPAID:
            invoice.status = InvoiceStatus.PAID
            invoice.paid_at, invoice.paid_reference = at, "credits"
        elif invoice.total == 0:  # nothing is owed: not left open as if a transfer were awaited
            invoice.status = InvoiceStatus.PAID
            invoice.paid_at, invoice.paid_reference = at, "nothing due"
        else:
            invoice.status = InvoiceStatus.FINALIZED
            invoice.paid_at, invoice.paid_reference = None, ""
    else:
        invoice.credits_applied, invoice.amount_due = Decimal(0), Decimal(0)
        invoice.status = InvoiceStatus.FINALIZED


def issue_fields(
    invoice: Invoice, *, number: str, now: datetime, terms_days: int, buyer: dict | None = None
) -> None:
    """Set what issuing gives a document (its number, dates, references, the parties'
    snapshot, status and settlement), without saving it. ``ISSUE_FIELDS`` are the columns."""
    invoice.number = number
    invoice.issued_at = now
    invoice.seller = dict(settings.BILLING_SELLER)
    invoice.buyer = buyer if buyer is not None else buyer_snapshot(invoice.organization)
    if invoice.kind == InvoiceKind.INVOICE:
        invoice.due_at = now + timedelta(days=terms_days)
        invoice.payment_reference = creditor_reference(number)
    else:
        invoice.due_at, invoice.payment_reference = None, ""
    settle_at_issue(invoice, now)
    invoice.updated_at = now


ISSUE_FIELDS = [
    "status",
    "number",
    "issued_at",
    "due_at",
    "payment_reference",
    "seller",
    "buyer",
    "credits_applied",
    "amount_due",
    "paid_at",
    "paid_reference",
    "updated_at",
]


def _issue(invoice: Invoice, *, now: datetime, terms_days: int, render: bool = True) -> None:
    """Number, dates, references, the parties' snapshot, settlement and (``render``) the PDF,
    written in the one UPDATE that takes the document out of draft (the freeze trigger allows
    it). Without ``render`` the PDF is left to be rendered after commit
    (``emails.issue_documents_later``): the trigger lets an issued document's PDF be stored
    once, never changed."""
    from billing.invoicing.documents import render_pdf

    issue_fields(
        invoice, number=_next_number(SERIES[invoice.kind], now.year), now=now, terms_days=terms_days
    )
    fields = list(ISSUE_FIELDS)
    if render:
        with translation.override(settings.LANGUAGE_CODE):  # the stored PDF's language
            invoice.pdf = render_pdf(invoice)
        fields.append("pdf")
    invoice.save(update_fields=fields)


# --- finalize ---------------------------------------------------------------------------------


def _debit_month(organization: Organization, month: date) -> None:
    """Run ``usage_debit_pending`` until the organisation's records of the month are all
    rated and debited (it works oldest first over every organisation, so this may take a
    few rounds when there is a backlog). Called outside the finalizing transaction, so it
    never holds one organisation's locks while taking another's."""
    start, end = month_bounds(month)
    usage_debit_all(
        UsageRecord.objects.filter(
            organization=organization, hour_start__gte=start, hour_start__lt=end
        )
    )


def _require_month_closed(invoice: Invoice, now: datetime) -> None:
    from portal.metering.services import closed_until

    _start, end = month_bounds(invoice.period_start)
    if end > now:
        raise Conflict(
            _("%(period_start)s has not ended yet; its invoice is a running draft.")
            % {"period_start": date_format(invoice.period_start, "YEAR_MONTH_FORMAT")},
            code=BillingErrorCode.PERIOD_NOT_ENDED,
        )
    closed = closed_until()
    has_usage = UsageRecord.objects.filter(organization=invoice.organization_id).exists()
    if has_usage and (closed is None or closed < end):
        raise Conflict(
            _(
                "Usage of %(month)s is not closed yet (closed until %(closed)s UTC). Run the "
                "month close first."
            )
            % {
                "month": date_format(invoice.period_start, "YEAR_MONTH_FORMAT"),
                "closed": f"{closed:%Y-%m-%d %H:%M}",
            }
            if closed
            else _("Usage of %(month)s is not closed yet.")
            % {"month": date_format(invoice.period_start, "YEAR_MONTH_FORMAT")},
            code=BillingErrorCode.USAGE_NOT_CLOSED,
        )


def _post_finalized(invoice: Invoice, actor: Actor) -> None:
    """The ledger side of a finalized invoice: the rounding that makes the month's usage
    debits equal the invoice's usage total to the cent, and the tax."""
    organization = invoice.organization
    debited = month_usage_debited(organization, invoice.period_start)
    for entry in closing_entries(invoice, debited):
        ledger_post(
            organization=organization,
            actor_label=actor.label,
            reference=invoice.number,
            invoice=invoice,
            **entry,
        )


def closing_entries(invoice: Invoice, debited: Decimal) -> list[dict]:
    """The ledger entries (kind, amount, idempotency key, description) an invoice just issued
    posts, given its month's usage debits (negative): the rounding to the cent and the tax."""
    entries = []
    rounding = -invoice.subtotal - debited
    if rounding:
        entries.append(
            {
                "kind": EntryKind.ROUNDING,
                "amount": rounding,
                "idempotency_key": f"rounding:{invoice.pk}",
                "description": (
                    f"Rounding of {invoice.period_start:%B %Y} usage to the cent ({invoice.number})"
                ),
            }
        )
    if invoice.tax:
        entries.append(
            {
                "kind": EntryKind.TAX,
                "amount": -invoice.tax,
                "idempotency_key": f"tax:{invoice.pk}",
                "description": f"Tax {invoice.tax_rate * 100:.2f} % on {invoice.number}",
            }
        )
    return entries


def invoice_finalize(invoice: Invoice, *, actor: Actor, notify: bool = True) -> Invoice:
    """Issue a draft invoice: its month's usage is rated and debited first, its lines rebuilt,
    then it gets the next number of the yearly ``INV`` series, its dates, payment reference,
    the parties' snapshot and its PDF, and the ledger its rounding and tax entries. Prepaid
    organisations' invoices are paid from credits at once. Emails the PDF after commit.

    Finalizing an invoice that is no longer a draft changes nothing and returns it."""
    return _finalize_invoice(invoice, actor=actor, notify=notify)[0]


def _finalize_invoice(
    invoice: Invoice, *, actor: Actor, notify: bool, pdf_later: bool = False
) -> tuple[Invoice, bool]:
    """``invoice_finalize``, saying whether this call issued it (False: it already was). With
    ``pdf_later`` (the month close) the PDF is rendered after commit by a task, which then
    sends the email."""
    _require_finance(actor)
    if invoice.kind != InvoiceKind.INVOICE:
        raise Conflict(
            _("Credit notes are issued when created."), code=BillingErrorCode.NOT_AN_INVOICE
        )
    try:
        return _finalize(invoice, actor=actor, notify=notify, pdf_later=pdf_later)
    except _UsagePending:
        pass
    # Some of the month's usage is not rated yet: rate and debit it outside the transaction
    # (so no other organisation's locks are taken under this one's), then try once more.
    _debit_month(invoice.organization, invoice.period_start)
    try:
        return _finalize(invoice, actor=actor, notify=notify, pdf_later=pdf_later)
    except _UsagePending:
        raise Conflict(
            _("Some usage of the month is not debited yet; try again in a moment."),
            code=BillingErrorCode.USAGE_NOT_DEBITED,
        ) from None


class _UsagePending(Exception):
    """Raised inside the finalizing transaction (undoing it) when records are not rated yet."""


@transaction.atomic
def _finalize(
    invoice: Invoice, *, actor: Actor, notify: bool, pdf_later: bool
) -> tuple[Invoice, bool]:
    lock_organization(invoice.organization_id)
    invoice = (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=invoice.pk)
    )
    if invoice.status != InvoiceStatus.DRAFT:
        return invoice, False
    now = timezone.now()
    _require_month_closed(invoice, now)
    if _rebuild(invoice):
        raise _UsagePending
    _tax_status, _rate, terms = _tax_terms(invoice.organization)
    _issue(invoice, now=now, terms_days=terms, render=not pdf_later)
    _post_finalized(invoice, actor)
    for action, details in finalize_audits(invoice):
        audit_record(
            actor=actor,
            action=action,
            target=invoice,
            organization=invoice.organization,
            details=details,
        )
    from billing.invoicing.emails import issue_documents_later, send_invoice_later

    if pdf_later:
        issue_documents_later([invoice.pk], notify=notify)
    elif notify:
        send_invoice_later(invoice)
    if charges_card(invoice):
        # invoiced organisations with a saved card pay it off-session (billing.payments)
        from billing.payments.tasks import invoice_charge

        enqueue_on_commit(invoice_charge, invoice.pk)
    return invoice, True


def finalize_audits(invoice: Invoice) -> list[tuple[str, dict]]:
    """The audit rows (action, details) of an invoice just issued."""
    rows = [
        (
            "invoice.finalize",
            {"number": invoice.number, "total": str(invoice.total), "currency": invoice.currency},
        )
    ]
    if invoice.status == InvoiceStatus.PAID:
        rows.append(
            (
                "invoice.paid",
                {"reference": invoice.paid_reference, "amount": str(invoice.total)},
            )
        )
    return rows


def charges_card(invoice: Invoice) -> bool:
    """Is an invoice just issued charged to the saved card after commit (an open invoice of
    an invoiced organisation)?"""
    return invoice.status == InvoiceStatus.FINALIZED and invoice.billing_mode == "invoiced"


# --- payment, void, resend -------------------------------------------------------------------


def _locked(invoice: Invoice) -> Invoice:
    lock_organization(invoice.organization_id)
    return (
        Invoice.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=invoice.pk)
    )


def _refuse_unless_open(invoice: Invoice) -> None:
    """Refusals shared by paying and voiding: only a finalized, unpaid invoice qualifies."""
    if invoice.kind != InvoiceKind.INVOICE:
        raise Conflict(
            _("A credit note is not paid or voided."), code=BillingErrorCode.NOT_AN_INVOICE
        )
    if invoice.status == InvoiceStatus.DRAFT:
        raise Conflict(
            _("The invoice is still a draft; finalize it first."),
            code=BillingErrorCode.INVOICE_NOT_FINALIZED,
        )
    if invoice.status == InvoiceStatus.PAID:
        raise Conflict(
            _("%(number)s is already paid.") % {"number": invoice.number},
            code=BillingErrorCode.INVOICE_ALREADY_PAID,
        )
    if invoice.status == InvoiceStatus.VOID:
        raise Conflict(
            _("%(number)s is void.") % {"number": invoice.number},
            code=BillingErrorCode.INVOICE_VOID,
        )


@transaction.atomic
def invoice_mark_paid(
    invoice: Invoice, *, reference: str, actor: Actor, paid_at: datetime | None = None
) -> Invoice:
    """Record that a finalized invoice was paid (a bank transfer seen by finance staff, or a
    card payment). For invoiced organisations the payment is posted to the ledger
    (``payment``, key ``invoice-paid:<id>``)."""
    _require_finance(actor)
    reference = (reference or "").strip()
    if not reference:
        raise InvalidInput(
            _("Give the payment's reference."), code=BillingErrorCode.REFERENCE_REQUIRED
        )
    invoice = _locked(invoice)
    _refuse_unless_open(invoice)
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = paid_at or timezone.now()
    invoice.paid_reference = reference[:120]
    invoice.updated_at = timezone.now()
    invoice.save(update_fields=["status", "paid_at", "paid_reference", "updated_at"])
    if invoice.billing_mode == BillingMode.INVOICED and invoice.amount_due > 0:
        ledger_post(
            organization=invoice.organization,
            kind=EntryKind.PAYMENT,
            amount=invoice.amount_due,
            idempotency_key=f"invoice-paid:{invoice.pk}",
            description=f"Payment of {invoice.number}",
            actor_label=actor.label,
            reference=reference[:120],
            invoice=invoice,
        )
    audit_record(
        actor=actor,
        action="invoice.paid",
        target=invoice,
        organization=invoice.organization,
        details={"reference": reference, "amount": str(invoice.amount_due)},
    )
    return invoice


@transaction.atomic(durable=True)
def invoice_void(invoice: Invoice, *, actor: Actor, reason: str) -> Invoice:
    """Cancel a finalized, unpaid invoice: nothing is owed for it any more. The month keeps its
    one invoice (void), and the ledger gets back what was still due (``adjustment``)."""
    _require_finance(actor)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the invoice is voided."), code=BillingErrorCode.REASON_REQUIRED
        )
    invoice = _locked(invoice)
    _refuse_unless_open(invoice)
    invoice.status = InvoiceStatus.VOID
    invoice.voided_at = timezone.now()
    invoice.note = f"Void: {reason}"[:300]
    invoice.updated_at = invoice.voided_at
    invoice.save(update_fields=["status", "voided_at", "note", "updated_at"])
    if invoice.amount_due > 0:
        ledger_post(
            organization=invoice.organization,
            kind=EntryKind.ADJUSTMENT,
            amount=invoice.amount_due,
            idempotency_key=f"invoice-void:{invoice.pk}",
            description=f"{invoice.number} voided: {reason}",
            actor_label=actor.label,
            reference=invoice.number,
            invoice=invoice,
        )
    audit_record(
        actor=actor,
        action="invoice.void",
        target=invoice,
        organization=invoice.organization,
        details={"reason": reason, "amount_due": str(invoice.amount_due)},
    )
    return invoice


@transaction.atomic(durable=True)
def invoice_resend(invoice: Invoice, *, actor: Actor) -> Invoice:
    """Email the invoice's PDF again to the organisation's billing contacts (after commit)."""
    from billing.invoicing.emails import send_invoice_later

    _require_finance(actor)
    invoice = Invoice.objects.select_related("organization").get(pk=invoice.pk)
    if invoice.status == InvoiceStatus.DRAFT:
        raise Conflict(
            _("A draft is not sent; finalize it first."),
            code=BillingErrorCode.INVOICE_NOT_FINALIZED,
        )
    send_invoice_later(invoice)
    audit_record(
        actor=actor,
        action="invoice.resend",
        target=invoice,
        organization=invoice.organization,
        details={"number": invoice.number},
    )
    return invoice


# --- credit notes -----------------------------------------------------------------------------


def _credit_amount(value, currency: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInput(
            _("Amount '%(value)s' is not a number.") % {"value": value},
            code=ErrorCode.AMOUNT_INVALID,
        ) from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidInput(_("A credit must be a positive amount."), code=ErrorCode.AMOUNT_INVALID)
    if amount != money_round(amount, currency):
        raise InvalidInput(
            _("Amounts in %(currency)s have at most %(places)s decimal places.")
            % {"currency": currency, "places": minor_units(currency)},
            code=ErrorCode.AMOUNT_INVALID,
        )
    return amount


def credit_note_create(
    invoice: Invoice,
    *,
    actor: Actor,
    reason: str,
    amount=None,
    lines: list[tuple[str, Decimal | str]] | None = None,
    notify: bool = True,
) -> Invoice:
    """Correct a finalized (or paid) invoice with a credit note, never an edit.

    Give either ``amount`` (one line, "Credit: <reason>") or ``lines`` as (description,
    amount) pairs; amounts are positive net amounts to credit, before tax. The credit note
    stores them negated, with tax at the invoice's rate and status, and is issued at once in
    the ``CN`` series with its PDF. Its total (negative) goes back to the organisation's
    ledger as a positive ``adjustment``; for an unpaid invoice of an invoiced organisation it
    also lowers the invoice's amount due (an invoice left with nothing due is paid by it).
    The credit notes of an invoice never exceed its subtotal."""
    _require_finance(actor)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(_("Say why the credit is given."), code=BillingErrorCode.REASON_REQUIRED)
    if (amount is None) == (lines is None):
        raise InvalidInput(_("Give an amount or lines, not both."), code=ErrorCode.INVALID)
    with transaction.atomic(durable=True):
        invoice = _locked(invoice)
        if invoice.kind != InvoiceKind.INVOICE:
            raise Conflict(
                _("A credit note corrects an invoice."), code=BillingErrorCode.NOT_AN_INVOICE
            )
        if invoice.status == InvoiceStatus.DRAFT:
            raise Conflict(
                _("The invoice is still a draft; it is rebuilt, not corrected."),
                code=BillingErrorCode.INVOICE_NOT_FINALIZED,
            )
        if invoice.status == InvoiceStatus.VOID:
            raise Conflict(
                _("%(number)s is void.") % {"number": invoice.number},
                code=BillingErrorCode.INVOICE_VOID,
            )
        currency = invoice.currency
        wanted = (
            [(f"Credit: {reason}", amount)]
            if lines is None
            else [
                (str(description).strip() or f"Credit: {reason}", value)
                for description, value in lines
            ]
        )
        if not wanted:
            raise InvalidInput(_("A credit note needs at least one line."), code=ErrorCode.INVALID)
        credits = [
            (description[:300], _credit_amount(value, currency)) for description, value in wanted
        ]
        credited = -sum(
            invoice.credit_notes.exclude(status=InvoiceStatus.DRAFT).values_list(
                "subtotal", flat=True
            ),
            Decimal(0),
        )
        asked = sum((value for _d, value in credits), Decimal(0))
        if credited + asked > invoice.subtotal:
            raise Conflict(
                _(
                    "%(number)s can be credited %(value)s %(currency)s more before tax, "
                    "not %(asked)s."
                )
                % {
                    "number": invoice.number,
                    "value": invoice.subtotal - credited,
                    "currency": currency,
                    "asked": asked,
                },
                code=BillingErrorCode.CREDIT_EXCEEDS_INVOICE,
                details={"creditable": str(invoice.subtotal - credited)},
            )
        totals = invoice_totals(
            [-value for _d, value in credits],
            currency=currency,
            tax_status=invoice.tax_status,
            tax_rate=invoice.tax_rate,
        )
        from billing.fapiao.services import corrections_check

        corrections_check(invoice, reduction=-totals.total)  # a fapiao never exceeds it
        note = Invoice.objects.create(
            organization=invoice.organization,
            kind=InvoiceKind.CREDIT_NOTE,
            corrects=invoice,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            currency=currency,
            billing_mode=invoice.billing_mode,
            tax_status=invoice.tax_status,
            tax_rate=invoice.tax_rate,
            subtotal=totals.subtotal,
            tax=totals.tax,
            total=totals.total,
            note=reason[:300],
        )
        note.organization = invoice.organization
        InvoiceLine.objects.bulk_create(
            InvoiceLine(
                invoice=note,
                position=position,
                kind=LineKind.CREDIT,
                description=description,
                quantity=Decimal(1),
                unit="credit",
                unit_price=-value,
                exact_amount=-value,
                amount=-value,
            )
            for position, (description, value) in enumerate(credits, start=1)
        )
        now = timezone.now()
        _issue(note, now=now, terms_days=0)
        ledger_post(
            organization=invoice.organization,
            kind=EntryKind.ADJUSTMENT,
            amount=-note.total,
            idempotency_key=f"credit-note:{note.pk}",
            description=f"Credit note {note.number} for {invoice.number}: {reason}",
            actor_label=actor.label,
            reference=note.number,
            invoice=note,
        )
        if invoice.status == InvoiceStatus.FINALIZED and invoice.amount_due > 0:
            invoice.amount_due = max(Decimal(0), invoice.amount_due + note.total)
            fields = ["amount_due", "updated_at"]
            if invoice.amount_due == 0:
                invoice.status = InvoiceStatus.PAID
                invoice.paid_at, invoice.paid_reference = now, note.number
                fields += ["status", "paid_at", "paid_reference"]
            invoice.updated_at = now
            invoice.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="credit_note.create",
            target=note,
            organization=invoice.organization,
            details={
                "corrects": invoice.number,
                "number": note.number,
                "total": str(note.total),
                "reason": reason,
            },
        )
        if notify:
            from billing.invoicing.emails import send_invoice_later

            send_invoice_later(note)
    return note


# --- month close ------------------------------------------------------------------------------


def usage_close_until(end: datetime, *, now: datetime | None = None) -> int:
    """Close every metering hour from the first open one up to ``end`` (exclusive), oldest
    first, as the periodic closer does (``usage_close_hour`` is idempotent). Returns how many
    hours were closed."""
    from portal.metering.services import first_open_hour, usage_close_hour

    hour, closed = first_open_hour(now or timezone.now()), 0
    while hour < end:
        usage_close_hour(hour_start=hour)
        closed += 1
        hour += HOUR
    return closed


def usage_debit_all(records: QuerySet[UsageRecord]) -> int:
    """Run ``usage_debit_pending`` until none of ``records`` is left unrated (it rates every
    organisation's closed records, oldest first). Returns how many records it rated."""
    rated = 0
    while records.filter(rating__isnull=True).exists():
        report = usage_debit_pending()
        if report.debited + report.skipped_free == 0:
            break  # another worker holds them; the finalize check decides
        rated += report.debited + report.skipped_free
    return rated


@dataclass
class MonthCloseReport:
    month: date
    hours_closed: int = 0
    records_debited: int = 0
    finalized: list[str] = field(default_factory=list)
    already_final: int = 0
    empty_drafts_removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.month:%Y-%m}: {len(self.finalized)} invoice(s) finalized, "
            f"{self.already_final} already final, {self.hours_closed} hour(s) closed, "
            f"{self.records_debited} record(s) debited"
        )
        if self.empty_drafts_removed:
            text += f", {self.empty_drafts_removed} empty draft(s) removed"
        if self.failed:
            text += f"; {len(self.failed)} FAILED: " + "; ".join(
                f"{org}: {error}" for org, error in self.failed
            )
        return text


def month_close(
    month: date | str | None = None, *, now: datetime | None = None
) -> MonthCloseReport:
    """Close a month (default: the previous one) and issue its invoices. Safe to run again.

    1. closes the metering hours up to the month's end (``usage_close_hour``);
    2. issues every organisation's one invoice of the month, set-based
       (``billing.invoicing.close``): the lines of all organisations from one grouped query
       over the month's records and their ratings (price periods included), then, a batch of
       organisations per transaction, invoices and lines written in bulk, numbers assigned in
       one statement under the sequence lock, the ledger's rounding and tax entries and the
       audit rows in bulk. Usage the query finds not rated yet is rated and debited first
       (``usage_debit_pending``) and grouped again. An organisation a batch cannot take is
       finalized on its own (``invoice_finalize``'s path), so one failure does not stop the
       others and a re-run finalizes what is left. Drafts of months without usage are
       removed.
    3. PDFs are rendered after commit, by workers, each invoice's once from the finalized
       invoice, then emailed (``emails.issue_documents_later``); until then the PDF is
       rendered on demand (``documents.invoice_pdf``).

    Refused (``month_not_closable``, with ``details['retry_at']``) until the month's last hour
    may be closed: ``CLOSE_GRACE`` after the month ends, so late events still count."""
    from billing.invoicing.close import issue_month
    from portal.metering.services import CLOSE_GRACE

    now = now or timezone.now()
    month = month_start(month) if month is not None else previous_month(now)
    _start, end = month_bounds(month)
    report = MonthCloseReport(month=month)
    if end + CLOSE_GRACE > now:
        retry_at = end + CLOSE_GRACE
        raise Conflict(
            _("%(month)s can be closed from %(retry_at)s UTC.")
            % {
                "month": date_format(month, "YEAR_MONTH_FORMAT"),
                "retry_at": format(retry_at, "%Y-%m-%d %H:%M"),
            },
            code=BillingErrorCode.MONTH_NOT_CLOSABLE,
            details={"retry_at": retry_at.isoformat()},
        )
    report.hours_closed = usage_close_until(end, now=now)
    issue_month(month, report, actor=Actor.system())
    return report


def close_one(organization: Organization, month: date, report: MonthCloseReport) -> None:
    """Finalize one organisation's invoice of the month on its own (the month close's path for
    what its batches cannot take), recording the outcome, a failure included, in ``report``."""
    start, end = month_bounds(month)
    month_records = UsageRecord.objects.filter(hour_start__gte=start, hour_start__lt=end)
    try:
        _close_one(organization, month, month_records, Actor.system(), report)
    except Exception as exc:
        logger.exception("month close of %s for %s failed", month, organization)
        report.failed.append((organization.slug, getattr(exc, "message", str(exc))))


def _close_one(
    organization: Organization,
    month: date,
    month_records: QuerySet,
    actor: Actor,
    report: MonthCloseReport,
) -> None:
    with transaction.atomic():
        lock_organization(organization.pk)
        invoice = _draft_get_or_create(organization, month)
        if invoice.status != InvoiceStatus.DRAFT:
            report.already_final += 1
            return
        if not month_records.filter(organization=organization).exists():
            invoice.delete()
            report.empty_drafts_removed += 1
            return
    invoice.organization = organization
    invoice, issued = _finalize_invoice(invoice, actor=actor, notify=True, pdf_later=True)
    if issued:
        report.finalized.append(invoice.number)
    else:  # another month close got there first
        report.already_final += 1
