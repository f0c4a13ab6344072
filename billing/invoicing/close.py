"""The month close, set-based: every organisation's invoice of a month issued from a few
grouped queries and bulk writes, not three queries and a PDF per organisation.

``issue_month`` (called by ``services.month_close`` once the month's hours are closed) works in
three steps:

1. **Who.** One query lists the organisations with usage in the month or an invoice of it (an
   index probe each): those whose invoice is already issued count as ``already_final``; a
   draft without usage is removed (``services.close_one``); the others are to be closed, each
   in its invoice's currency (the draft's, else its ledger account's).

2. **What.** One grouped query over the month's records and their ratings (a hash join, as
   the plain aggregate of the month does, not an index probe per record) gives, for every
   organisation at once, the quantity, rated amount and record count per (meter, instance
   type, region, price run), in organisation order: a few rows per organisation, handled one
   batch of organisations at a time, so memory never holds the month's records. The price
   runs (the parts of the month in which one unit price applied) come from the same
   ``_LineBuilder`` the running draft uses, computed once per currency for the few (type,
   region) and meters whose price changes in the month, and passed to the query as buckets:
   a record falls in the run in force at its ``period_start``, as ``_LineBuilder.pieces``
   decides it for a draft. Usage the query finds not rated yet is rated and debited
   (``usage_debit_pending``) and its organisations grouped again. The lines are then worded
   and ordered by ``assemble_lines``, the draft's own code, so a closed invoice says exactly
   what its last draft said. (On SQLite, which has no exact sums, Python groups the records
   itself.)

3. **Issue**, ``BATCH`` organisations per transaction, in the house lock order: their rows
   (organisation, then invoice), new drafts and all lines inserted in bulk while the invoices
   are drafts, the batch's numbers taken at once under the yearly sequence's row lock
   (``services.take_numbers``) and written, with every other issued field, in the one UPDATE
   that takes the invoices out of draft (the freeze trigger allows exactly that), then the
   ledger's rounding and tax entries, the accounts' balances and the audit rows in bulk. The
   month's usage debits of an organisation are minus the sum of its ratings (each debit is
   written with its rating, for the same amount, by ``usage_debit_pending``), which the
   grouped query has already summed, so the rounding needs no query of its own. After
   commit, the PDFs are rendered by workers, a few invoices per task, each once from the
   finalized invoice, then emailed (``emails.issue_documents_later``); an open invoice of an
   invoiced organisation is charged to its saved card as before.

An organisation a batch cannot take (usage not rated yet, a currency that changed under it, a
price run the query did not know) or a batch that fails is finalized on its own by
``services.close_one`` (``invoice_finalize``'s path, the PDF still after commit), so one
failure does not stop the others and a re-run finalizes what is left.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from billing.invoicing import services
from billing.invoicing.services import (
    ISSUE_FIELDS,
    SERIES,
    LineDraft,
    MonthCloseReport,
    _Group,
    _LineBuilder,
    _Names,
    _Piece,
    _Run,
)
from billing.models import (
    Account,
    BillingProfile,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    LedgerEntry,
)
from portal.accounts.models import AuditEvent, Organization
from portal.accounts.types import Actor
from portal.background import enqueue_on_commit
from portal.metering.lifecycle_usage import COMPUTE, HOUR
from portal.metering.models import Meter, MeterPrice, UsageRecord
from portal.metering.rating import pricing_for
from portal.money import money_round

logger = logging.getLogger(__name__)

BATCH = 250  # organisations per transaction
FETCH = 2000  # grouped rows turned into Python values at a time

# the columns an issued invoice gets from its lines (the rest are ``ISSUE_FIELDS``)
AMOUNT_FIELDS = ["billing_mode", "tax_status", "tax_rate", "subtotal", "tax", "total"]


class _Row(NamedTuple):
    """One organisation's usage of one (meter, instance type, region) in one price run."""

    organization_id: int
    meter_id: int
    instance_type_id: int | None
    region_id: int | None
    run: int  # 1-based index into the group's runs
    quantity: Decimal
    rated: Decimal
    records: int
    unrated: int


@dataclass
class _Plan:
    """One organisation's invoice lines, worked out before its batch's transaction (what
    depends on the organisation's settings, its billing mode, tax and the parties' snapshot,
    is read again under its lock, as a single finalize does)."""

    organization: Organization
    currency: str
    lines: list[LineDraft]
    rated: Decimal  # the sum of the month's ratings: minus its usage debits


@dataclass
class _Month:
    """What one close knows about its month: bounds, the line builders (one per currency) and
    the price runs passed to the grouped query."""

    month: date
    start: datetime
    end: datetime
    actor: Actor
    currency: dict[int, str]  # organisation -> currency of its invoice
    names: _Names = field(default_factory=_Names)
    builders: dict[str, _LineBuilder] = field(default_factory=dict)
    # (currency, meter, type, region) and (currency, meter) -> the starts of its runs
    type_runs: dict[tuple, list[datetime]] = field(default_factory=dict)
    meter_runs: dict[tuple, list[datetime]] = field(default_factory=dict)
    # the same, whatever the currency: (meter, type, region) and meter -> every currency's
    # run starts together (the grouped query's buckets, each inside one run of each currency)
    type_cuts: dict[tuple, list[datetime]] = field(default_factory=dict)
    meter_cuts: dict[int, list[datetime]] = field(default_factory=dict)

    def builder(self, currency: str) -> _LineBuilder:
        if currency not in self.builders:
            self.builders[currency] = _LineBuilder(currency, self.start, self.end)
        return self.builders[currency]

    def known_runs(self, currency: str, group: _Group) -> bool:
        return (currency, group.meter_id, group.instance_type_id, group.region_id) in (
            self.type_runs
        ) or (currency, group.meter_id) in self.meter_runs

    def run_of(self, currency: str, row: _Row) -> int:
        """The currency's run (1-based) of a grouped row's bucket."""
        key = (row.meter_id, row.instance_type_id, row.region_id)
        cuts = self.type_cuts.get(key) or self.meter_cuts.get(row.meter_id)
        if cuts is None:
            return 1
        starts = self.type_runs.get((currency, *key)) or self.meter_runs.get(
            (currency, row.meter_id)
        )
        return bisect.bisect_right(starts, cuts[row.run - 1]) if starts else 1


def issue_month(month: date, report: MonthCloseReport, *, actor: Actor) -> None:
    """Issue every organisation's invoice of ``month`` (see the module docstring), recording
    the outcome in ``report``. The month's hours are closed already."""
    from portal.metering.services import closed_until

    start, end = services.month_bounds(month)
    to_close: dict[int, str] = {}
    candidates = list(_candidates(month, start, end))  # a few small values per organisation
    for org_id, currency, has_usage, status, invoice_currency, account_currency in candidates:
        if status is not None and status != InvoiceStatus.DRAFT:
            report.already_final += 1
        elif not has_usage:
            services.close_one(Organization.objects.get(pk=org_id), month, report)
        else:
            to_close[org_id] = invoice_currency or account_currency or currency
    if not to_close:
        return
    closed = closed_until()
    if end > timezone.now() or closed is None or closed < end:
        # each finalize refuses with its reason (period not ended, usage not closed)
        for organization in Organization.objects.filter(pk__in=to_close).order_by("pk"):
            services.close_one(organization, month, report)
        return
    context = _Month(month=month, start=start, end=end, actor=actor, currency=to_close)
    _price_runs(context)
    batch: list[tuple[int, list[_Row]]] = []
    for org_id, rows in _grouped(context):
        batch.append((org_id, rows))
        if len(batch) >= BATCH:
            _close_batch(batch, context, report)
            batch = []
    if batch:
        _close_batch(batch, context, report)


def _candidates(month: date, start: datetime, end: datetime):
    """(organisation, its currency, has usage in the month, its invoice's status and
    currency, its account's currency) of every organisation with usage in the month or an
    invoice of it, in organisation order."""
    records = UsageRecord.objects.filter(
        organization=OuterRef("pk"), hour_start__gte=start, hour_start__lt=end
    )
    invoice = Invoice.objects.filter(
        organization=OuterRef("pk"), kind=InvoiceKind.INVOICE, period_start=month
    )
    return (
        Organization.objects.annotate(
            has_usage=Exists(records),
            invoice_status=Subquery(invoice.values("status")[:1]),
            invoice_currency=Subquery(invoice.values("currency")[:1]),
            account_currency=Subquery(
                Account.objects.filter(organization=OuterRef("pk")).values("currency")[:1]
            ),
        )
        .filter(Q(has_usage=True) | Q(invoice_status__isnull=False))
        .order_by("pk")
        .values_list(
            "pk", "currency", "has_usage", "invoice_status", "invoice_currency", "account_currency"
        )
    )


def _price_runs(context: _Month) -> None:
    """The runs of every (type, region) and meter whose price may change within the month, in
    each currency closed: the only groups with more than one run (``_LineBuilder.runs``: a
    price taking effect in the month, or in the hour before it)."""
    from portal.catalog.models import Price

    since, until = context.start - HOUR, context.end
    compute = Meter.objects.filter(key=COMPUTE).first()
    for currency in sorted(set(context.currency.values())):
        builder = context.builder(currency)
        if compute is not None:
            context.names.meters.setdefault(compute.pk, compute)
            changed = (
                Price.objects.filter(
                    currency=currency, effective_from__gte=since, effective_from__lt=until
                )
                .order_by()
                .values_list("instance_type_id", "region_id")
                .distinct()
            )
            for type_id, region_id in changed:
                runs = builder.runs(compute, _Group(compute.pk, type_id, region_id))
                if len(runs) > 1:
                    key = (compute.pk, type_id, region_id)
                    context.type_runs[(currency, *key)] = [run.start for run in runs]
                    cuts = context.type_cuts.setdefault(key, [])
                    cuts[:] = sorted({*cuts, *(run.start for run in runs)})
        meter_ids = set(
            MeterPrice.objects.filter(
                currency=currency, effective_from__gte=since, effective_from__lt=until
            )
            .order_by()
            .values_list("meter_id", flat=True)
            .distinct()
        )
        context.names.load([_Group(meter_id, None, None) for meter_id in meter_ids])
        for meter_id in sorted(meter_ids):
            meter = context.names.meters[meter_id]
            if pricing_for(meter.key).kind == "no_gpu":
                _no_gpu_runs(context, builder, currency, meter)
                continue
            if pricing_for(meter.key).kind != "meter":
                continue  # compute and storage are not priced by meter prices
            runs = builder.runs(meter, _Group(meter_id, None, None))
            if len(runs) > 1:
                context.meter_runs[(currency, meter_id)] = [run.start for run in runs]
                cuts = context.meter_cuts.setdefault(meter_id, [])
                cuts[:] = sorted({*cuts, *(run.start for run in runs)})


def _no_gpu_runs(context: _Month, builder: _LineBuilder, currency: str, meter: Meter) -> None:
    """The runs of each (type, region) billed in no-GPU mode in the month, when the no-GPU
    price changes within it (its price is per region, so its runs are per group, as compute's)."""
    placed = (
        UsageRecord.objects.filter(
            meter=meter, hour_start__gte=context.start, hour_start__lt=context.end
        )
        .order_by()
        .values_list("instance_type_id", "region_id")
        .distinct()
    )
    for type_id, region_id in placed:
        runs = builder.runs(meter, _Group(meter.pk, type_id, region_id))
        if len(runs) > 1:
            key = (meter.pk, type_id, region_id)
            context.type_runs[(currency, *key)] = [run.start for run in runs]
            cuts = context.type_cuts.setdefault(key, [])
            cuts[:] = sorted({*cuts, *(run.start for run in runs)})


# --- the grouped query ------------------------------------------------------------------------


def _grouped(context: _Month, only: list[int] | None = None) -> Iterator[tuple[int, list[_Row]]]:
    """(organisation, its rows) for every organisation to close with usage (or those of
    ``only``), in organisation order."""
    if connection.vendor == "postgresql":
        rows = _grouped_postgresql(context, only)
    else:
        rows = _grouped_python(context, only)
    current, collected = None, []
    for row in rows:
        if row.organization_id != current:
            if collected:
                yield current, collected
            current, collected = row.organization_id, []
        collected.append(row)
    if collected:
        yield current, collected


# The month's records joined to their ratings, summed per organisation, meter, instance type,
# region and price bucket. ``type_cuts`` (``tc``) and ``meter_cuts`` (``mc``) are the buckets of
# the (type, region) and the meters whose price changes in the month (a few rows; usually none),
# whatever the currency: each bucket lies inside one run of every currency, which Python finds
# (``_Month.run_of``). The buckets are joined as rows, not computed from an array, so that the
# planner sees how few groups there are and aggregates them in a hash table, in parallel, as it
# does the plain aggregate; a join with nothing to join is left out (``_grouped_sql``).
# ``only`` (NULL: everyone) limits it to some organisations.
GROUPED_SELECT = """
SELECT r.organization_id, r.meter_id, r.instance_type_id, r.region_id, {bucket},
       sum(r.quantity), coalesce(sum(g.amount), 0), count(*), count(*) - count(g.id)
FROM metering_usagerecord r
LEFT JOIN billing_usagerating g ON g.usage_record_id = r.id
"""
TYPE_CUTS_JOIN = """
LEFT JOIN unnest(%(t_meter)s::bigint[], %(t_type)s::bigint[], %(t_region)s::bigint[],
                 %(t_bucket)s::int[], %(t_from)s::timestamptz[], %(t_until)s::timestamptz[])
    AS tc (meter_id, instance_type_id, region_id, bucket, starts, ends)
    ON tc.meter_id = r.meter_id AND tc.instance_type_id = r.instance_type_id
    AND tc.region_id = r.region_id AND r.period_start >= tc.starts AND r.period_start < tc.ends
"""
METER_CUTS_JOIN = """
LEFT JOIN unnest(%(m_meter)s::bigint[], %(m_bucket)s::int[], %(m_from)s::timestamptz[],
                 %(m_until)s::timestamptz[])
    AS mc (meter_id, bucket, starts, ends)
    ON mc.meter_id = r.meter_id AND r.period_start >= mc.starts AND r.period_start < mc.ends
"""
GROUPED_WHERE = """
WHERE r.hour_start >= %(start)s AND r.hour_start < %(end)s
    AND (%(only)s::bigint[] IS NULL OR r.organization_id = ANY(%(only)s::bigint[]))
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
"""
BUCKETS = {
    (False, False): "1",
    (True, False): "coalesce(tc.bucket, 1)",
    (False, True): "coalesce(mc.bucket, 1)",
    (True, True): "coalesce(tc.bucket, mc.bucket, 1)",
}


def _grouped_sql(type_cuts: bool, meter_cuts: bool) -> str:
    """The grouped query, with the bucket joins it needs (fixed pieces of SQL only)."""
    return (
        GROUPED_SELECT.format(bucket=BUCKETS[(type_cuts, meter_cuts)])
        + (TYPE_CUTS_JOIN if type_cuts else "")
        + (METER_CUTS_JOIN if meter_cuts else "")
        + GROUPED_WHERE
    )


def _grouped_postgresql(context: _Month, only: list[int] | None = None) -> Iterator[_Row]:
    """The grouped query (one statement, exact ``numeric`` sums), each row's bucket turned into
    its currency's run. Its result is a few rows an organisation (one per line, about five at
    the bench's shape), read ``FETCH`` rows at a time; a server-side cursor would keep even
    those on the server, but PostgreSQL plans a cursor's query for its first rows and never in
    parallel, which made it three times slower than the same query run plainly."""
    params: dict = {"start": context.start, "end": context.end, "only": only}
    for prefix, cuts in (("t", context.type_cuts), ("m", context.meter_cuts)):
        rows = [
            (key, bucket, moment, until)
            for key, starts in sorted(cuts.items())
            for bucket, (moment, until) in enumerate(
                zip(starts, [*starts[1:], context.end], strict=True), start=1
            )
        ]
        if prefix == "t":
            params["t_meter"] = [key[0] for key, *_rest in rows]
            params["t_type"] = [key[1] for key, *_rest in rows]
            params["t_region"] = [key[2] for key, *_rest in rows]
        else:
            params["m_meter"] = [key for key, *_rest in rows]
        params[f"{prefix}_bucket"] = [bucket for _key, bucket, *_rest in rows]
        params[f"{prefix}_from"] = [moment for _key, _bucket, moment, _until in rows]
        params[f"{prefix}_until"] = [until for *_rest, until in rows]
    sql = _grouped_sql(bool(context.type_cuts), bool(context.meter_cuts))
    with connection.cursor() as cursor:
        # Without JIT: above a plan cost the bench's month crosses, PostgreSQL compiles and
        # optimises the query's expressions first, two seconds of eight there, for a query
        # that reads each row once. (The result is read whole: it outlives the transaction.)
        with transaction.atomic(), connection.cursor() as setting:
            setting.execute("SET LOCAL jit = off")
            cursor.execute(sql, params)
        while chunk := cursor.fetchmany(FETCH):
            for values in chunk:
                row = _Row(*values)
                currency = context.currency.get(row.organization_id)
                if currency is not None:
                    yield row._replace(run=context.run_of(currency, row))


def _grouped_python(context: _Month, only: list[int] | None = None) -> list[_Row]:
    """The grouped query's rows, summed in Python (SQLite keeps decimals as floating point;
    the suite's and ``make run``'s database, small)."""
    sums: dict[tuple, list] = {}
    records = UsageRecord.objects.filter(hour_start__gte=context.start, hour_start__lt=context.end)
    if only is not None:
        records = records.filter(organization__in=only)
    records = records.order_by().values_list(
        "organization_id",
        "meter_id",
        "instance_type_id",
        "region_id",
        "period_start",
        "quantity",
        "rating__amount",
    )
    for org_id, meter_id, type_id, region_id, period_start, quantity, rated in records:
        currency = context.currency.get(org_id)
        if currency is None:
            continue
        starts = context.type_runs.get(
            (currency, meter_id, type_id, region_id)
        ) or context.meter_runs.get((currency, meter_id))
        run = bisect.bisect_right(starts, period_start) if starts else 1
        key = (org_id, meter_id, type_id, region_id, run)
        total = sums.get(key) or sums.setdefault(key, [Decimal(0), Decimal(0), 0, 0])
        total[0] += quantity
        total[2] += 1
        if rated is None:
            total[3] += 1
        else:
            total[1] += rated
    return [
        _Row(*key, *values)
        for key, values in sorted(sums.items(), key=lambda item: _sortable(item[0]))
    ]


def _sortable(key: tuple) -> tuple:
    return tuple((value is None, value or 0) for value in key)


# --- a batch ------------------------------------------------------------------------------------


def _close_batch(
    batch: list[tuple[int, list[_Row]]], context: _Month, report: MonthCloseReport
) -> None:
    """Issue the invoices of a batch of organisations in one transaction; what it cannot take
    is finalized one organisation at a time."""
    ids = [org_id for org_id, _rows in batch]
    pending = [org_id for org_id, rows in batch if any(row.unrated for row in rows)]
    if pending:
        # usage not rated yet (the rating task is behind): rate it, then group it again
        records = UsageRecord.objects.filter(
            organization__in=pending, hour_start__gte=context.start, hour_start__lt=context.end
        )
        report.records_debited += services.usage_debit_all(records)
        regrouped = dict(_grouped(context, only=pending))
        batch = [(org_id, regrouped.get(org_id, rows)) for org_id, rows in batch]
    organizations = Organization.objects.in_bulk(ids)
    context.names.load([row for _org_id, rows in batch for row in rows])
    plans, alone = [], []
    for org_id, rows in batch:
        organization = organizations.get(org_id)
        if organization is None:
            continue  # deleted since the query
        try:
            plan = _plan(organization, rows, context)
        except Exception:
            logger.exception("month close of %s: %s is closed on its own", context.month, org_id)
            plan = None
        if plan is None:
            alone.append(organization)
        else:
            plans.append(plan)
    if plans:
        try:
            numbers, already_final, replan = _issue_batch(plans, context)
        except Exception:
            logger.exception(
                "month close of %s: a batch of %d failed; closing its organisations one by one",
                context.month,
                len(plans),
            )
            alone.extend(plan.organization for plan in plans)
        else:
            report.finalized.extend(numbers)
            report.already_final += already_final
            alone.extend(replan)
    for organization in sorted(alone, key=lambda org: org.pk):
        services.close_one(organization, context.month, report)


def _plan(organization: Organization, rows: list[_Row], context: _Month) -> _Plan | None:
    """The organisation's invoice lines from its rows, or None when it must be finalized on
    its own (some usage not rated yet, or a price run the grouped query did not cut)."""
    if any(row.unrated for row in rows):
        return None  # finalize_invoice rates it first
    currency = context.currency[organization.pk]
    builder = context.builder(currency)
    priced: dict[tuple, tuple[_Group, list[_Run], list[_Piece]]] = {}
    for row in rows:
        key = (row.meter_id, row.instance_type_id, row.region_id)
        entry = priced.get(key)
        if entry is None:
            group = _Group(*key)
            runs = builder.runs(context.names.meters[row.meter_id], group)
            if len(runs) > 1 and not context.known_runs(currency, group):
                return None
            entry = priced[key] = (group, runs, [_Piece() for _ in runs])
        group, runs, pieces = entry
        piece = pieces[row.run - 1]
        piece.quantity += row.quantity
        piece.exact += row.rated
        piece.records += row.records
        group.quantity += row.quantity
        group.rated += row.rated
    lines = services.assemble_lines(
        list(priced.values()), context.names, context.start, context.end
    )
    services.buyer_snapshot(organization)  # one that cannot be taken is closed on its own
    return _Plan(
        organization=organization,
        currency=currency,
        lines=lines,
        rated=sum((line.exact_amount for line in lines), Decimal(0)),
    )


def _issue_batch(plans: list[_Plan], context: _Month) -> tuple[list[str], int, list[Organization]]:
    """Issue the planned invoices in one transaction. Returns their numbers, how many were
    issued already (by another close), and the organisations to finalize on their own."""
    from billing.invoicing.emails import issue_documents_later
    from billing.payments.tasks import invoice_charge

    month, actor = context.month, context.actor
    by_org = {plan.organization.pk: plan for plan in plans}
    ids = sorted(by_org)
    with transaction.atomic():
        locked = {
            org.pk: org
            for org in Organization.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        }
        profiles = {
            p.organization_id: p for p in BillingProfile.objects.filter(organization__in=ids)
        }
        existing = {
            invoice.organization_id: invoice
            for invoice in Invoice.objects.select_for_update().filter(
                organization__in=ids, kind=InvoiceKind.INVOICE, period_start=month
            )
        }
        accounts = _accounts(plans)
        issuing: list[tuple[_Plan, Invoice]] = []
        new: list[Invoice] = []
        already_final, replan = 0, []
        terms: dict[int, int] = {}
        for org_id in ids:
            plan, invoice = by_org[org_id], existing.get(org_id)
            organization = locked.get(org_id)
            if organization is None:
                continue  # deleted since its usage was grouped
            if invoice is not None and invoice.status != InvoiceStatus.DRAFT:
                already_final += 1
                continue
            currency = invoice.currency if invoice is not None else accounts[org_id].currency
            if currency != plan.currency:
                replan.append(plan.organization)
                continue
            if invoice is None:
                invoice = Invoice(
                    organization=organization,
                    kind=InvoiceKind.INVOICE,
                    period_start=month,
                    period_end=services.next_month(month),
                    currency=currency,
                )
                new.append(invoice)
            # what _rebuild sets: the settings as they are now, under the lock
            tax_status, tax_rate, terms[org_id] = services.tax_terms_of(profiles.get(org_id))
            totals = services.invoice_totals(
                [money_round(line.exact_amount, currency) for line in plan.lines],
                currency=currency,
                tax_status=tax_status,
                tax_rate=tax_rate,
            )
            invoice.organization = organization
            invoice.billing_mode = organization.billing_mode
            invoice.tax_status, invoice.tax_rate = tax_status, tax_rate
            invoice.subtotal, invoice.tax, invoice.total = (
                totals.subtotal,
                totals.tax,
                totals.total,
            )
            issuing.append((plan, invoice))
        if not issuing:
            return [], already_final, replan
        # lines are written while their invoices are drafts (the freeze refuses them after)
        drafts = [invoice.pk for _plan, invoice in issuing if invoice.pk is not None]
        Invoice.objects.bulk_create(new)
        InvoiceLine.objects.filter(invoice__in=drafts).delete()
        InvoiceLine.objects.bulk_create(
            [
                line
                for plan, invoice in issuing
                for line in services.invoice_line_rows(invoice, plan.lines)
            ],
            batch_size=2000,
        )
        now = timezone.now()
        numbers = services.take_numbers(SERIES[InvoiceKind.INVOICE], now.year, len(issuing))
        for (_plan, invoice), number in zip(issuing, numbers, strict=True):
            services.issue_fields(
                invoice, number=number, now=now, terms_days=terms[invoice.organization_id]
            )
        invoices = [invoice for _plan, invoice in issuing]
        _issue_all(invoices)
        _post_ledger(issuing, accounts, actor, now)
        AuditEvent.objects.bulk_create(
            _audit_row(actor, action, invoice, details, now)
            for _plan, invoice in issuing
            for action, details in services.finalize_audits(invoice)
        )
        issue_documents_later([invoice.pk for invoice in invoices], notify=True)
        for invoice in invoices:
            if services.charges_card(invoice):
                enqueue_on_commit(invoice_charge, invoice.pk)
    return numbers, already_final, replan


# One statement takes a batch's invoices out of draft: numbers, amounts, dates, parties,
# status and settlement (``AMOUNT_FIELDS`` and ``ISSUE_FIELDS``), one row of arrays each.
ISSUE_SQL = """
UPDATE billing_invoice AS i SET
    billing_mode = v.billing_mode, tax_status = v.tax_status, tax_rate = v.tax_rate,
    subtotal = v.subtotal, tax = v.tax, total = v.total, status = v.status, number = v.number,
    issued_at = v.issued_at, due_at = v.due_at, payment_reference = v.payment_reference,
    seller = v.seller, buyer = v.buyer, credits_applied = v.credits_applied,
    amount_due = v.amount_due, paid_at = v.paid_at, paid_reference = v.paid_reference,
    updated_at = v.updated_at
FROM unnest(
    %s::bigint[], %s::text[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[],
    %s::numeric[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[],
    %s::jsonb[], %s::jsonb[], %s::numeric[], %s::numeric[], %s::timestamptz[], %s::text[],
    %s::timestamptz[]
) AS v (id, billing_mode, tax_status, tax_rate, subtotal, tax, total, status, number,
        issued_at, due_at, payment_reference, seller, buyer, credits_applied, amount_due,
        paid_at, paid_reference, updated_at)
WHERE i.id = v.id AND i.status = 'draft'
"""
ISSUE_COLUMNS = ["pk", *AMOUNT_FIELDS, *ISSUE_FIELDS]  # in the order of ISSUE_SQL's arrays


def _issue_all(invoices: list[Invoice]) -> None:
    """Write the issued invoices (``issue_fields`` set them) in one UPDATE out of draft, as
    the freeze trigger allows. SQLite (no arrays) is given Django's ``bulk_update``."""
    if connection.vendor != "postgresql":
        Invoice.objects.bulk_update(invoices, [*AMOUNT_FIELDS, *ISSUE_FIELDS])
        return
    columns = [
        [
            json.dumps(getattr(invoice, name))
            if name in ("seller", "buyer")
            else getattr(invoice, name)
            for invoice in invoices
        ]
        for name in ISSUE_COLUMNS
    ]
    with connection.cursor() as cursor:
        cursor.execute(ISSUE_SQL, columns)
        if cursor.rowcount != len(invoices):
            raise RuntimeError(f"{len(invoices) - cursor.rowcount} invoice(s) left draft meanwhile")


def _accounts(plans: list[_Plan]) -> dict[int, Account]:
    """The organisations' ledger accounts, created in their currency where missing (as
    ``account_for`` does when an invoice is drafted)."""
    accounts = {
        account.organization_id: account
        for account in Account.objects.filter(organization__in=[p.organization for p in plans])
    }
    missing = [
        Account(organization=plan.organization, currency=plan.organization.currency)
        for plan in plans
        if plan.organization.pk not in accounts
    ]
    if missing:
        Account.objects.bulk_create(missing)
        accounts.update({account.organization_id: account for account in missing})
    return accounts


def _post_ledger(
    issuing: list[tuple[_Plan, Invoice]], accounts: dict[int, Account], actor: Actor, now
) -> None:
    """Each invoice's rounding and tax entries (``services.closing_entries``, the same as a
    single finalize posts), appended in bulk, and the accounts' balances moved under their
    row locks (taken in id order, after the sequence's, as ``ledger_post`` would)."""
    entries: list[LedgerEntry] = []
    moved: dict[int, Decimal] = {}
    for plan, invoice in issuing:
        account = accounts[invoice.organization_id]
        for entry in services.closing_entries(invoice, -plan.rated):
            entries.append(
                LedgerEntry(
                    account=account,
                    kind=entry["kind"],
                    amount=entry["amount"],
                    currency=account.currency,
                    idempotency_key=entry["idempotency_key"],
                    description=entry["description"][:300],
                    actor_label=actor.label[:200],
                    reference=invoice.number[:120],
                    invoice=invoice,
                    created_at=now,
                )
            )
            moved[account.pk] = moved.get(account.pk, Decimal(0)) + entry["amount"]
    if not entries:
        return
    locked = list(Account.objects.select_for_update().filter(pk__in=moved).order_by("pk"))
    LedgerEntry.objects.bulk_create(entries, batch_size=2000)
    if connection.vendor == "postgresql":
        ids = sorted(moved)
        with connection.cursor() as cursor:
            cursor.execute(MOVE_SQL, [now, ids, [moved[pk] for pk in ids]])
        return
    for account in locked:
        account.balance += moved[account.pk]
        account.updated_at = now
    Account.objects.bulk_update(locked, ["balance", "updated_at"])


MOVE_SQL = """
UPDATE billing_account AS a SET balance = a.balance + v.amount, updated_at = %s
FROM unnest(%s::bigint[], %s::numeric[]) AS v (id, amount)
WHERE a.id = v.id
"""


def _audit_row(actor: Actor, action: str, invoice: Invoice, details: dict, now) -> AuditEvent:
    """The row ``audit_record`` would append, for a bulk insert."""
    return AuditEvent(
        organization=invoice.organization,
        actor_user=actor.user,
        actor_api_key=actor.api_key,
        actor_label=actor.label,
        action=action,
        target_type=type(invoice).__name__,
        target_id=str(invoice.pk),
        target_label=str(invoice)[:200],
        ip_address=actor.ip_address,
        details=details,
        created_at=now,
    )
