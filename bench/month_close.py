"""The month close at scale.

1,000 organisations with 10 instances each (10,000 instances) running every hour of a month:
7.2 million hourly usage records for a 30-day month (7.4 million for 31 days), each rated and
debited as the periodic ``billing.debit_usage`` task leaves them (a ``UsageRating`` and a usage
ledger entry per record), and the month's hours closed. One instance type's USD price changes
in the middle of the month, so part of every USD organisation's lines are split per price;
a tenth of the organisations pay in CNY, a third are invoiced monthly, half pay 19 % tax.

The data is generated inside PostgreSQL (``INSERT ... SELECT`` over ``generate_series``: a few
minutes for the full size, where creating 7 million records through the ORM would take hours),
then ``billing.invoicing.services.month_close`` is timed (hours already closed, usage already
debited, so this is the invoicing: one invoice per organisation, lines from its records,
numbering, ledger rounding and tax, audit, PDF rendering and emails queued for after commit)
against one raw SQL aggregate of the same records (sum of quantity and rating per organisation,
meter, type and region), reported as a ratio, with the peak memory of each
(``resource.getrusage`` max RSS growth, and ``tracemalloc`` peak with ``--tracemalloc``, which
slows Python down). PDFs rendered inside the close are counted (there should be none).

Then the work the close queued for after commit is done as its workers would do it: the PDFs
are rendered and stored, ``emails.PDF_CHUNK`` invoices per task as the month close enqueues
them, by ``--pdf-workers`` processes at once (forked, each its own database connection,
running the task's own function, ``emails.issued_documents_send``, which then queues each
email), timed apart. The result is checked: one invoice per organisation, gapless numbers,
every line's exact amount the sum of its ratings, the ledger's usage plus rounding equal to
the invoices' subtotals to the cent, every invoice with its one stored PDF; and a second month
close issues nothing, numbers and ledger unchanged.

Run: DEBUG=1 DATABASE_URL=postgres://... .venv/bin/python bench/month_close.py
     [--orgs 1000] [--instances 10000] [--month 2026-09] [--pdf-workers 2] [--tracemalloc]
(``--orgs 100 --instances 1000`` is the tenth-size run.) PostgreSQL only. Uses a throwaway test
database; emails are queued on an in-memory broker, not sent.
"""

import argparse
import logging
import multiprocessing
import os
import resource
import sys
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"  # invoice emails are queued, not sent here

import django

django.setup()
logging.getLogger("weasyprint").setLevel(logging.WARNING)  # a line per rendering step
logging.getLogger("fontTools").setLevel(logging.WARNING)

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

TYPES = [  # name, GPUs, USD/h, CNY/h
    ("gpu_1x_h200", 1, "3.50", "24.85"),
    ("gpu_2x_h200", 2, "7.00", "49.70"),
    ("gpu_8x_h200", 8, "28.00", "198.80"),
    ("mig_1g_18gb", 1, "0.60", "4.26"),
]
NEW_PRICE = "3.29"  # gpu_1x_h200 in USD from the 16th


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(orgs: int, instances: int, month) -> dict:
    """Organisations, accounts, catalog, and the month's rated records, in SQL."""
    from datetime import UTC, datetime, timedelta

    from billing.invoicing.services import month_bounds
    from billing.models import Account, BillingProfile
    from portal.accounts.models import Organization
    from portal.catalog import services as catalog
    from portal.catalog.models import GpuModel
    from portal.catalog.synthetic import DATA_DIR
    from portal.metering.lifecycle_usage import COMPUTE
    from portal.metering.services import builtin_meters

    start, end = month_bounds(month)
    hours = int((end - start).total_seconds() // 3600)
    catalog.gpu_models_load(path=DATA_DIR / "gpus.csv")
    region = catalog.region_ensure(code="bench-1", name="Bench 1", country="US")
    h200 = GpuModel.objects.get(code="h200-sxm-141gb")
    since = datetime(2020, 1, 1, tzinfo=UTC)
    change = start + timedelta(days=15)
    types, prices = [], []
    for name, gpus, usd, cny in TYPES:
        instance_type, _ = catalog.instance_type_upsert(
            name=name, gpu_model=h200, gpu_count=gpus, mig_profile=None, vcpus=4, ram_gib=32
        )
        types.append(instance_type.pk)
        for currency, price in (("USD", usd), ("CNY", cny)):
            catalog.price_set(
                instance_type=instance_type,
                region=region,
                currency=currency,
                on_demand_per_hour=price,
                effective_from=since,
                allow_past=True,
            )
            until = change if (name, currency) == ("gpu_1x_h200", "USD") else end
            prices.append((currency, instance_type.pk, start, until, Decimal(price)))
        if name == "gpu_1x_h200":
            catalog.price_set(
                instance_type=instance_type,
                region=region,
                currency="USD",
                on_demand_per_hour=NEW_PRICE,
                effective_from=change,
                allow_past=True,
            )
            prices.append(("USD", instance_type.pk, change, end, Decimal(NEW_PRICE)))
    meter = builtin_meters()[COMPUTE]
    created = Organization.objects.bulk_create(
        Organization(
            name=f"Bench {i}",
            slug=f"bench-{i}",
            billing_email=f"billing{i}@bench.example",
            country="CN" if i % 10 == 0 else "DE",
            currency="CNY" if i % 10 == 0 else "USD",
            billing_mode="invoiced" if i % 3 == 0 else "prepaid",
        )
        for i in range(orgs)
    )
    Account.objects.bulk_create(
        Account(organization=o, currency=o.currency, balance=0) for o in created
    )
    BillingProfile.objects.bulk_create(
        BillingProfile(organization=o, tax_status="standard", tax_rate=Decimal("0.19"))
        for i, o in enumerate(created)
        if i % 2 == 0
    )
    org_ids = [o.pk for o in created]
    per_org = instances // orgs
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE bench_price (currency text, instance_type_id bigint, "
            "valid_from timestamptz, valid_until timestamptz, price numeric)"
        )
        cursor.executemany("INSERT INTO bench_price VALUES (%s, %s, %s, %s, %s)", prices)
        steps = [
            (
                "usage records",
                """
                INSERT INTO metering_usagerecord (organization_id, subject_type, subject_id,
                    meter_id, hour_start, period_start, quantity, unit, instance_type_id,
                    region_id, closed_at)
                SELECT (%(orgs)s::bigint[])[1 + i / %(per_org)s], 'instance', i::text, %(meter)s,
                       %(start)s::timestamptz + h * interval '1 hour',
                       %(start)s::timestamptz + h * interval '1 hour',
                       CASE WHEN (i + h) %% 17 = 0 THEN 1234.5 ELSE 3600 END, 'second',
                       (%(types)s::bigint[])[1 + i %% 4], %(region)s,
                       %(start)s::timestamptz + (h + 1) * interval '1 hour'
                FROM generate_series(0, %(instances)s - 1) AS i
                CROSS JOIN generate_series(0, %(hours)s - 1) AS h
                """,
            ),
            (
                "usage ledger entries",
                """
                INSERT INTO billing_ledgerentry (account_id, kind, amount, currency,
                    idempotency_key, description, actor_label, usage_record_id, reference,
                    created_at)
                SELECT a.id, 'usage', -round(r.quantity * p.price / 3600, 12), a.currency,
                       'usage:' || r.id, 'instance.seconds instance ' || r.subject_id,
                       'system', r.id, '', r.closed_at
                FROM metering_usagerecord r
                JOIN billing_account a ON a.organization_id = r.organization_id
                JOIN bench_price p ON p.currency = a.currency
                    AND p.instance_type_id = r.instance_type_id
                    AND r.hour_start >= p.valid_from AND r.hour_start < p.valid_until
                WHERE r.hour_start >= %(start)s AND r.hour_start < %(end)s
                """,
            ),
            (
                "ratings",
                """
                INSERT INTO billing_usagerating (usage_record_id, amount, currency, entry_id,
                    rated_at)
                SELECT e.usage_record_id, -e.amount, e.currency, e.id, e.created_at
                FROM billing_ledgerentry e WHERE e.kind = 'usage'
                """,
            ),
            (
                "balances",
                """
                UPDATE billing_account a SET balance = s.total
                FROM (SELECT account_id, sum(amount) AS total FROM billing_ledgerentry
                      GROUP BY account_id) s
                WHERE s.account_id = a.id
                """,
            ),
            (
                "closed hours",
                """
                INSERT INTO metering_closedhour (hour_start, closed_at, records)
                SELECT %(start)s::timestamptz + h * interval '1 hour', now(), %(instances)s
                FROM generate_series(0, %(hours)s - 1) AS h
                """,
            ),
        ]
        params = {
            "orgs": org_ids,
            "per_org": per_org,
            "meter": meter.pk,
            "start": start,
            "end": end,
            "types": types,
            "region": region.pk,
            "instances": instances,
            "hours": hours,
        }
        for label, sql in steps:
            began = time.perf_counter()
            cursor.execute(sql, params)
            print(f"  {label}: {cursor.rowcount:,} rows in {time.perf_counter() - began:.1f} s")
        cursor.execute(
            "ANALYZE metering_usagerecord; ANALYZE billing_ledgerentry; "
            "ANALYZE billing_usagerating; ANALYZE billing_account"
        )
    return {"start": start, "end": end, "hours": hours, "records": instances * hours}


RAW_AGGREGATE = """
    SELECT r.organization_id, r.meter_id, r.instance_type_id, r.region_id,
           sum(r.quantity), sum(g.amount), count(*)
    FROM metering_usagerecord r LEFT JOIN billing_usagerating g ON g.usage_record_id = r.id
    WHERE r.hour_start >= %s AND r.hour_start < %s
    GROUP BY 1, 2, 3, 4
"""


def measure(label: str, function, use_tracemalloc: bool):
    rss_before = rss_mb()
    if use_tracemalloc:
        tracemalloc.start()
    began = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - began
    peak = None
    if use_tracemalloc:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    growth = rss_mb() - rss_before
    extra = f", tracemalloc peak {peak:.1f} MB" if peak is not None else ""
    print(f"{label}: {seconds:.2f} s, max RSS +{growth:.1f} MB{extra}")
    return result, seconds


def check(data: dict, rows: list, orgs: int, pdfs: bool) -> None:
    """One invoice per organisation, gapless numbers, lines equal to the ratings, and the
    ledger's usage + rounding equal to the subtotals to the cent."""
    from billing.models import Invoice, InvoiceLine

    invoices = Invoice.objects.filter(kind="invoice", period_start=data["start"].date())
    numbers = sorted(invoices.values_list("number", flat=True))
    year = numbers[0][4:8]
    assert len(numbers) == orgs, (len(numbers), orgs)
    assert numbers == [f"INV-{year}-{n:06d}" for n in range(1, orgs + 1)], numbers[:3]
    rated = {}
    for org_id, *_rest, amount, _count in rows:
        rated[org_id] = rated.get(org_id, Decimal(0)) + amount
    exact = {}
    for org_id, amount in InvoiceLine.objects.filter(invoice__in=invoices).values_list(
        "invoice__organization_id", "exact_amount"
    ):
        exact[org_id] = exact.get(org_id, Decimal(0)) + amount
    assert exact == rated
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM billing_invoice i
            JOIN billing_account a ON a.organization_id = i.organization_id
            LEFT JOIN (SELECT account_id, sum(amount) AS total FROM billing_ledgerentry
                       WHERE kind IN ('usage', 'rounding') GROUP BY account_id) l
                ON l.account_id = a.id
            WHERE i.kind = 'invoice' AND coalesce(l.total, 0) <> -i.subtotal
            """
        )
        assert cursor.fetchone()[0] == 0
    split = InvoiceLine.objects.filter(invoice__in=invoices, description__contains="price").count()
    if pdfs:
        unrendered = invoices.filter(pdf__isnull=True).count()
        assert unrendered == 0, f"{unrendered} invoices without their PDF"
        assert all(bytes(pdf[:5]) == b"%PDF-" for pdf in invoices.values_list("pdf", flat=True))
    print(
        f"checked: {orgs:,} invoices {numbers[0]}..{numbers[-1]}, gapless; line amounts equal "
        f"the ratings; ledger usage + rounding = subtotal for each ({split:,} lines split by "
        "the mid-month price change)" + ("; every invoice has its PDF" if pdfs else "")
    )


def render_after_commit(workers: int) -> tuple[int, float]:
    """Render and store the PDFs the close left to its workers, ``PDF_CHUNK`` invoices per
    task, in ``workers`` processes at once. Returns (PDFs stored, seconds)."""
    from billing.invoicing.emails import PDF_CHUNK
    from billing.models import Invoice

    ids = list(
        Invoice.objects.filter(kind="invoice", pdf__isnull=True)
        .exclude(status="draft")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chunks = [ids[i : i + PDF_CHUNK] for i in range(0, len(ids), PDF_CHUNK)]
    connection.close()  # each worker opens its own
    began = time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        stored = sum(pool.map(_render_chunk, chunks, chunksize=1))
    finally:
        pool.close()
        pool.join()
    return stored, time.perf_counter() - began


def _render_chunk(ids: list[int]) -> int:
    """One rendering task's work (``billing.render_invoice_pdfs``), in a worker process."""
    from billing.invoicing import emails

    try:
        return len(ids) - len(emails.issued_documents_send(ids, notify=True))
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--month", default=None, help="YYYY-MM (default: the previous month)")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--pdf-workers", type=int, default=2, help="processes rendering the PDFs after the close"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile month_close")
    parser.add_argument("--queries", action="store_true", help="the slowest SQL of month_close")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench/month_close.py needs PostgreSQL: set DATABASE_URL=postgres://...")

    setup_test_environment(debug=False)
    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"test_bench_month_{os.getpid()}"
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        from billing.invoicing import documents
        from billing.invoicing import services as invoicing

        month = invoicing.month_start(args.month) if args.month else invoicing.previous_month()
        print(
            f"database: {connection.vendor}; {args.orgs:,} organisations, "
            f"{args.instances:,} instances, {month:%B %Y}"
        )
        began = time.perf_counter()
        data = build(args.orgs, args.instances, month)
        print(
            f"(generated {data['records']:,} rated records, {data['hours']} hours, in "
            f"{time.perf_counter() - began:.0f} s)"
        )

        rows, raw_seconds = measure(
            "raw SQL aggregate of the month's records",
            lambda: _fetch(RAW_AGGREGATE, [data["start"], data["end"]]),
            args.tracemalloc,
        )
        print(f"  ({len(rows):,} groups)")

        rendering = {"seconds": 0.0, "count": 0}
        render = documents.render_pdf

        def timed_render(invoice):
            began = time.perf_counter()
            try:
                return render(invoice)
            finally:
                rendering["seconds"] += time.perf_counter() - began
                rendering["count"] += 1

        documents.render_pdf = timed_render
        close = lambda: invoicing.month_close(month)  # noqa: E731
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            close = lambda: profiler.runcall(invoicing.month_close, month)  # noqa: E731
        slow = SlowQueries()
        if args.queries:
            inner = close
            close = lambda: slow.run(inner)  # noqa: E731
        report, close_seconds = measure("month_close", close, args.tracemalloc)
        if args.queries:
            slow.print()
        if args.profile:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(20)
        documents.render_pdf = render
        print(f"  {report.summary()[:200]}")
        per = close_seconds / max(1, len(report.finalized))
        print(
            f"  {per * 1000:.1f} ms an invoice; PDFs rendered inside the close: "
            f"{rendering['count']:,} ({rendering['seconds']:.1f} s)"
        )
        print(f"ratio: month_close takes {close_seconds / raw_seconds:.2f}x the raw aggregate")
        _rows, raw_again = measure(
            "raw SQL aggregate again, after the close",
            lambda: _fetch(RAW_AGGREGATE, [data["start"], data["end"]]),
            False,
        )
        print(
            f"  (ratio against the mean of both raw runs: "
            f"{close_seconds / ((raw_seconds + raw_again) / 2):.2f}x)"
        )
        if args.pdf_workers:
            stored, pdf_seconds = render_after_commit(args.pdf_workers)
            print(
                f"after commit: {stored:,} PDFs rendered, stored and their emails queued by "
                f"{args.pdf_workers} worker process(es) in {pdf_seconds:.1f} s "
                f"({pdf_seconds / max(1, stored) * 1000:.0f} ms an invoice of wall time, "
                f"{pdf_seconds * args.pdf_workers / max(1, stored) * 1000:.0f} ms of a worker)"
            )
        check(data, rows, args.orgs, pdfs=bool(args.pdf_workers))
        rerun_check(month, args.orgs, measure)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def rerun_check(month, orgs: int, measure) -> None:
    """A second close issues nothing: no invoice, number, ledger entry or audit row more."""
    from billing.invoicing import services as invoicing
    from billing.models import DocumentSequence, LedgerEntry
    from portal.accounts.models import AuditEvent

    before = (
        LedgerEntry.objects.count(),
        AuditEvent.objects.count(),
        list(DocumentSequence.objects.values_list("series", "year", "last")),
    )
    again, _seconds = measure("month_close again", lambda: invoicing.month_close(month), False)
    assert again.finalized == [] and again.already_final == orgs, again.summary()
    after = (
        LedgerEntry.objects.count(),
        AuditEvent.objects.count(),
        list(DocumentSequence.objects.values_list("series", "year", "last")),
    )
    assert after == before, (before, after)
    print(f"checked: the second close issued nothing ({again.summary()})")


class SlowQueries:
    """Total time per SQL statement (parameters aside), to find what month_close waits on."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def __call__(self, execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.times.setdefault(sql, []).append(time.perf_counter() - began)

    def run(self, function):
        with connection.execute_wrapper(self):
            return function()

    def print(self, top: int = 12) -> None:
        ranked = sorted(self.times.items(), key=lambda item: -sum(item[1]))[:top]
        for sql, times in ranked:
            print(f"  {sum(times):7.2f} s {len(times):6d}x  {' '.join(sql.split())[:230]}")


def _fetch(sql: str, params) -> list:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


if __name__ == "__main__":
    main()
