"""Finance exports at scale: 10,000 finalized invoices with 20 lines each (200,000 lines), in
one month, written as the register CSV, the register XLSX, the line CSV and the accounting
journal CSV. Each export is timed and its peak Python memory measured (``tracemalloc``), at
the full size and at half of it (both above the 2,000-row fetch size): streaming means the
peak must not grow with the number of invoices.

The invoices are generated inside PostgreSQL (``INSERT ... SELECT`` over ``generate_series``),
as drafts (the freeze triggers refuse lines of a finalized invoice), then finalized with one
``UPDATE`` that gives each its number.

Run: DEBUG=1 DATABASE_URL=postgres://... .venv/bin/python bench/exports.py [--invoices 10000]
PostgreSQL only; uses a throwaway test database.
"""

import argparse
import io
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

LINES = 20


def build(invoices: int) -> None:
    """``invoices`` organisations, each with one finalized October invoice of ``LINES`` lines
    (one invoice per organisation and month is a constraint)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO accounts_organization (name, slug, billing_email, country, tax_id,
                currency, billing_mode, created_at)
            SELECT 'Bench ' || i, 'bench-' || i, 'b' || i || '@example.com', 'DE', '', 'USD',
                'invoiced', now()
            FROM generate_series(1, %s) AS i
            """,
            [invoices],
        )
        cursor.execute(
            """
            INSERT INTO billing_invoice (organization_id, kind, period_start, period_end,
                currency, billing_mode, status, tax_status, tax_rate, subtotal, tax, total,
                credits_applied, amount_due, payment_reference, paid_reference, seller, buyer,
                note, created_at, updated_at)
            SELECT o.id, 'invoice', date '2026-10-01', date '2026-11-01', 'USD', 'invoiced',
                'draft', 'standard', 0.19, %s * 12.34, round(%s * 12.34 * 0.19, 2),
                %s * 12.34 + round(%s * 12.34 * 0.19, 2), 0,
                %s * 12.34 + round(%s * 12.34 * 0.19, 2), '', '', '{}', '{}', '', now(), now()
            FROM accounts_organization o WHERE o.slug LIKE 'bench-%%'
            """,
            [LINES] * 6,
        )
        cursor.execute(
            """
            INSERT INTO billing_invoiceline (invoice_id, position, kind, description, meter_key,
                quantity, unit, unit_price, exact_amount, amount)
            SELECT inv.id, p, 'compute', 'gpu_1x_h200 in us-east-1', 'compute.gpu_seconds',
                3.525714, 'hour', 3.5, 12.34, 12.34
            FROM billing_invoice inv, generate_series(1, %s) AS p
            WHERE inv.status = 'draft'
            """,
            [LINES],
        )
        cursor.execute(
            """
            UPDATE billing_invoice SET status = 'finalized',
                number = 'INV-B-' || lpad(id::text, 8, '0'),
                issued_at = timestamptz '2026-11-01 00:05+00',
                due_at = timestamptz '2026-12-01 00:05+00'
            WHERE status = 'draft'
            """
        )


def measure(name: str, export) -> tuple[float, float, int]:
    tracemalloc.start()
    began = time.perf_counter()
    rows = export()
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 1e6, rows


def exports_of(month):
    from billing.finance import exports

    flt = exports.RegisterFilter(start=month, end=month)
    sink = io.StringIO
    return {
        "register CSV": lambda: exports.write_csv(
            exports.register_rows(flt), exports.REGISTER_COLUMNS, _Null()
        ),
        "register XLSX": lambda: exports.write_xlsx(
            exports.register_rows(flt), exports.REGISTER_COLUMNS, io.BytesIO(), flt.title
        ),
        "lines CSV": lambda: exports.write_csv(
            exports.line_rows(flt), exports.LINE_COLUMNS, _Null()
        ),
        "journal CSV": lambda: exports.write_csv(
            exports.journal_rows(month.replace(day=1), month.replace(day=30)),
            exports.JOURNAL_COLUMNS,
            sink(),
        ),
    }


class _Null(io.StringIO):
    """A file that keeps nothing (so the measured memory is the export's, not the output's)."""

    def write(self, text: str) -> int:
        return len(text)


def main() -> None:
    from datetime import date

    parser = argparse.ArgumentParser()
    parser.add_argument("--invoices", type=int, default=10_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench/exports.py needs PostgreSQL: set DATABASE_URL=postgres://...")
    setup_test_environment(debug=False)
    old_name = connection.creation.create_test_db(verbosity=0)
    try:
        month = date(2026, 10, 1)
        results = {}
        half = args.invoices // 2
        for size in (half, args.invoices):
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE billing_invoiceline, billing_invoice CASCADE")
                cursor.execute("DELETE FROM accounts_organization WHERE slug LIKE 'bench-%%'")
            began = time.perf_counter()
            build(size)
            print(
                f"generated {size:,} invoices x {LINES} lines in {time.perf_counter() - began:.1f} s"
            )
            for name, export in exports_of(month).items():
                if name == "journal CSV":
                    # the journal is by issue day: all invoices were issued on 1 November
                    from billing.finance import exports

                    export = lambda: exports.write_csv(  # noqa: E731
                        exports.journal_rows(date(2026, 11, 1), date(2026, 11, 1)),
                        exports.JOURNAL_COLUMNS,
                        _Null(),
                    )
                results[(name, size)] = measure(name, export)
        print()
        print(f"| export | {half:,} invoices | {args.invoices:,} invoices | peak ratio |")
        print("|---|---|---|---|")
        for name in exports_of(month):
            small, large = results[(name, half)], results[(name, args.invoices)]
            print(
                f"| {name} ({large[2]:,} rows) | {small[0]:.1f} s, peak {small[1]:.1f} MB "
                f"| {large[0]:.1f} s, peak {large[1]:.1f} MB | {large[1] / small[1]:.2f} |"
            )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
