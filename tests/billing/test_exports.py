"""Finance exports: the register and its totals, lines, ageing, the journal, and the streaming
CSV and XLSX writers. Amounts are asserted exactly."""

import csv
import io
import tracemalloc
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from openpyxl import load_workbook

from billing.finance import exports
from billing.finance.exports import (
    JOURNAL_COLUMNS,
    LINE_COLUMNS,
    REGISTER_COLUMNS,
    RegisterFilter,
)
from billing.invoicing import services as invoicing
from portal.errors import InvalidInput
from tests.factories.billing import (
    AFTER_CLOSE,
    OCT,
    finance,
)

pytestmark = pytest.mark.django_db

D = Decimal
OCT_ONLY = {"start": OCT, "end": date(2026, 10, 31)}


def test_the_month_is_what_the_fixture_says(month):
    usd, late, cny, note = month["usd"], month["late"], month["cny"], month["note"]
    usd.refresh_from_db()
    assert (usd.status, usd.total, usd.amount_due) == ("paid", D("42.00"), D("30.00"))
    assert (note.subtotal, note.tax, note.total) == (D("-10.00"), D("-2.00"), D("-12.00"))
    assert (late.status, late.total, late.amount_due) == ("finalized", D("7.00"), D("7.00"))
    assert late.due_at == AFTER_CLOSE + timedelta(days=14)
    assert (cny.status, cny.subtotal, cny.tax, cny.total) == (
        "paid",
        D("124.25"),
        D("7.46"),
        D("131.71"),
    )
    assert month["draft"].status == "draft" and month["draft"].total == D("3.50")


# --- the register --------------------------------------------------------------------------


def test_register_rows_and_totals(month, django_assert_num_queries):
    flt = RegisterFilter(**OCT_ONLY)
    rows = list(exports.register_rows(flt))
    assert [(r["number"], r["currency"], r["status"]) for r in rows] == [
        ("CN-2026-000001", "USD", "finalized"),
        ("INV-2026-000001", "USD", "paid"),
        ("INV-2026-000002", "USD", "finalized"),
        ("INV-2026-000003", "CNY", "paid"),
    ]
    assert set(rows[0]) == {c.name for c in REGISTER_COLUMNS}
    by_number = {r["number"]: r for r in rows}
    assert {k: by_number["INV-2026-000001"][k] for k in exports.TOTAL_FIELDS} == {
        "net": "35.00",
        "tax": "7.00",
        "gross": "42.00",
        "paid": "30.00",
        "outstanding": "0.00",
    }
    assert {k: by_number["CN-2026-000001"][k] for k in exports.TOTAL_FIELDS} == {
        "net": "-10.00",
        "tax": "-2.00",
        "gross": "-12.00",
        "paid": "0.00",
        "outstanding": "0.00",
    }
    assert by_number["INV-2026-000002"]["outstanding"] == "7.00"
    assert by_number["INV-2026-000003"]["paid"] == "131.71"
    assert by_number["INV-2026-000003"]["country"] == "CN"
    assert by_number["INV-2026-000001"]["issued_at"] == "2026-11-01T00:30:00+00:00"
    assert by_number["INV-2026-000001"]["period"] == "2026-10"
    assert by_number["CN-2026-000001"]["due_at"] == ""

    with django_assert_num_queries(1):
        totals = exports.register_totals(flt)
    summed = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        for name in exports.TOTAL_FIELDS:
            summed[row["currency"]][name] += D(row[name])
    assert totals == {currency: dict(values) for currency, values in summed.items()}
    assert totals["USD"] == {
        "net": D("32.00"),
        "tax": D("5.00"),
        "gross": D("37.00"),
        "paid": D("30.00"),
        "outstanding": D("7.00"),
    }
    assert totals["CNY"]["gross"] == D("131.71")


def test_register_filters(month):
    orgs = month["orgs"]

    def numbers(**extra):
        return [r["number"] for r in exports.register_rows(RegisterFilter(**OCT_ONLY, **extra))]

    assert numbers(currency="CNY") == ["INV-2026-000003"]
    assert numbers(country="fr") == ["INV-2026-000002"]
    assert numbers(organization_id=orgs["usd"].pk) == ["CN-2026-000001", "INV-2026-000001"]
    assert numbers(statuses=["finalized"]) == ["CN-2026-000001", "INV-2026-000002"]
    # a month is the invoice's period_start: issued in November, it is not in November's
    assert list(exports.register_rows(RegisterFilter(date(2026, 11, 1), date(2026, 11, 30)))) == []
    assert len(numbers()) == len(
        list(exports.register_rows(RegisterFilter(date(2024, 1, 1), date(2026, 12, 1))))
    )


def test_drafts_are_left_out_unless_asked_for_and_then_flagged(month, tmp_path):
    flt = RegisterFilter(**OCT_ONLY)
    assert "draft" not in {r["status"] for r in exports.register_rows(flt)}
    assert "includes drafts" not in flt.title
    with_drafts = RegisterFilter(**OCT_ONLY, include_drafts=True)
    rows = list(exports.register_rows(with_drafts))
    drafts = [r for r in rows if r["status"] == "draft"]
    assert len(drafts) == 1 and drafts[0]["number"] == "" and drafts[0]["gross"] == "3.50"
    assert rows[-1]["status"] == "draft"  # drafts last in their month
    assert exports.register_totals(with_drafts)["USD"]["gross"] == D("40.50")
    assert [r["description"] for r in exports.line_rows(with_drafts) if r["invoice_number"] == ""]

    out = io.StringIO()
    exports.write_csv(rows, REGISTER_COLUMNS, out, title=with_drafts.title)
    first_line = out.getvalue().splitlines()[0]
    assert first_line == "2026-10 (includes drafts)"
    path = tmp_path / "register.xlsx"
    exports.write_xlsx(rows, REGISTER_COLUMNS, path, with_drafts.title)
    assert load_workbook(path).sheetnames == ["2026-10 (includes drafts)"]
    long = RegisterFilter(date(2024, 1, 1), date(2026, 10, 1), include_drafts=True).title
    assert exports.sheet_title(long).endswith("(includes drafts)")
    assert len(exports.sheet_title(long)) <= 31


def test_lines(month):
    rows = list(exports.line_rows(RegisterFilter(**OCT_ONLY, currency="USD")))
    assert [tuple(r.values()) for r in rows] == [
        ("CN-2026-000001", "1", "credit", "Credit: Outage", "1", "credit", "-10", "-10.00", "USD"),
        (
            "INV-2026-000001",
            "1",
            "compute",
            "gpu_1x_h200 in us-east-1",
            "10",
            "hour",
            "3.5",
            "35.00",
            "USD",
        ),
        (
            "INV-2026-000002",
            "1",
            "compute",
            "gpu_1x_h200 in us-east-1",
            "2",
            "hour",
            "3.5",
            "7.00",
            "USD",
        ),
    ]
    assert list(rows[0]) == [c.name for c in LINE_COLUMNS]


def test_ageing_buckets_overdue_amounts(month):
    flt = RegisterFilter(**OCT_ONLY)
    # due 15 Nov: not overdue on the day it is due
    assert exports.ageing(flt, date(2026, 11, 15)) == {}
    expected = {
        date(2026, 11, 16): "0-30",
        date(2026, 12, 15): "0-30",
        date(2026, 12, 16): "31-60",
        date(2027, 1, 14): "31-60",
        date(2027, 1, 15): "61-90",
        date(2027, 2, 13): "61-90",
        date(2027, 2, 14): "90+",
    }
    for today, bucket in expected.items():
        buckets = exports.ageing(flt, today)
        assert set(buckets) == {"USD"}, today
        assert buckets["USD"] == {
            name: D("7.00") if name == bucket else D(0) for name in exports.AGEING_BUCKETS
        }, today
    assert exports.ageing(RegisterFilter(**OCT_ONLY, currency="CNY"), date(2027, 6, 1)) == {}


# --- the journal ---------------------------------------------------------------------------


def _balanced(rows):
    per_reference = defaultdict(lambda: [D(0), D(0)])
    per_currency = defaultdict(lambda: [D(0), D(0)])
    for row in rows:
        for bucket in (per_reference[row["reference"]], per_currency[row["currency"]]):
            bucket[0] += D(row["debit"])
            bucket[1] += D(row["credit"])
    return per_reference, per_currency


def test_journal_is_double_entry_and_balances(month):
    rows = list(exports.journal_rows(date(2026, 11, 1), date(2026, 11, 30)))
    assert rows and set(rows[0]) == {c.name for c in JOURNAL_COLUMNS}
    per_reference, per_currency = _balanced(rows)
    for reference, (debit, credit) in per_reference.items():
        assert debit == credit and debit > 0, reference
    for currency, (debit, credit) in per_currency.items():
        assert debit == credit, currency
    for row in rows:
        assert (D(row["debit"]) == 0) != (D(row["credit"]) == 0)

    def posting(reference):
        return sorted(
            (r["account"], r["debit"], r["credit"], r["currency"])
            for r in rows
            if r["reference"] == reference
        )

    assert posting("INV-2026-000001") == [
        ("1100", "42.00", "0.00", "USD"),
        ("2200", "0.00", "7.00", "USD"),
        ("4000", "0.00", "35.00", "USD"),
    ]
    assert posting("CN-2026-000001") == [
        ("1100", "0.00", "12.00", "USD"),
        ("2200", "2.00", "0.00", "USD"),
        ("4000", "10.00", "0.00", "USD"),
    ]
    # usage consumed from credits (prepaid) is revenue against the credits liability
    assert posting("INV-2026-000003") == [
        ("2200", "0.00", "7.46", "CNY"),
        ("2300", "131.71", "0.00", "CNY"),
        ("4000", "0.00", "124.25", "CNY"),
    ]
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row["reference"].split("-")[0]].append(
            (row["date"], row["account"], row["debit"], row["credit"], row["currency"])
        )
    assert sorted(by_kind["PAY"]) == [
        ("2026-11-05", "1100", "0.00", "30.00", "USD"),
        ("2026-11-05", "1200", "30.00", "0.00", "USD"),
    ]
    assert sorted(by_kind["TOPUP"]) == [
        ("2026-11-02", "1200", "1000.00", "0.00", "CNY"),
        ("2026-11-02", "2300", "0.00", "1000.00", "CNY"),
    ]
    assert sorted(by_kind["REFUND"]) == [
        ("2026-11-06", "1200", "0.00", "100.00", "CNY"),
        ("2026-11-06", "2300", "100.00", "0.00", "CNY"),
    ]
    # the invoiced organisation's receivable is settled: 42.00 - 12.00 credited - 30.00 paid
    receivable = sum(
        D(r["debit"]) - D(r["credit"])
        for r in rows
        if r["account"] == "1100" and r["currency"] == "USD"
    )
    assert receivable == D("7.00")  # the late payer's invoice, still due
    # a day range picks by date: only the refund on 6 Nov
    only_sixth = list(exports.journal_rows(date(2026, 11, 6), date(2026, 11, 6)))
    assert {r["reference"].split("-")[0] for r in only_sixth} == {"REFUND"}


def test_journal_accounts_follow_settings_and_voids_reverse(month, settings):
    settings.BILLING_JOURNAL_ACCOUNTS = {"bank": "1210", "receivable": "1150"}
    late = month["late"]
    with time_machine.travel(datetime(2026, 12, 3, tzinfo=UTC), tick=False):
        invoicing.invoice_void(late, actor=finance(late.organization), reason="Issued in error")
    rows = list(exports.journal_rows(date(2026, 11, 1), date(2026, 12, 31)))
    accounts = {r["account"] for r in rows}
    assert {"1210", "1150"} <= accounts and not {"1200", "1100"} & accounts
    void = sorted(
        (r["account"], r["debit"], r["credit"])
        for r in rows
        if r["reference"] == f"{late.number}/void"
    )
    assert void == [("1150", "0.00", "7.00"), ("4000", "7.00", "0.00")]
    per_reference, per_currency = _balanced(rows)
    assert all(debit == credit for debit, credit in per_reference.values())
    assert all(debit == credit for debit, credit in per_currency.values())
    receivable = sum(D(r["debit"]) - D(r["credit"]) for r in rows if r["account"] == "1150")
    assert receivable == 0


def test_credit_notes_after_payment_or_of_prepaid_invoices_go_to_customer_credits(month):
    usd, cny = month["usd"], month["cny"]
    with time_machine.travel(datetime(2026, 11, 20, tzinfo=UTC), tick=False):
        paid_note = invoicing.credit_note_create(
            usd, actor=finance(usd.organization), amount="5.00", reason="Late", notify=False
        )
        prepaid_note = invoicing.credit_note_create(
            cny, actor=finance(cny.organization), amount="24.25", reason="Slow", notify=False
        )
    rows = list(exports.journal_rows(date(2026, 11, 20), date(2026, 11, 20)))

    def posting(note):
        return sorted(
            (r["account"], r["debit"], r["credit"], r["currency"])
            for r in rows
            if r["reference"] == note.number
        )

    assert posting(paid_note) == [
        ("2200", "1.00", "0.00", "USD"),
        ("2300", "0.00", "6.00", "USD"),
        ("4000", "5.00", "0.00", "USD"),
    ]
    assert posting(prepaid_note) == [
        ("2200", "1.46", "0.00", "CNY"),
        ("2300", "0.00", "25.71", "CNY"),
        ("4000", "24.25", "0.00", "CNY"),
    ]


# --- writers -------------------------------------------------------------------------------


def _typed(column, value):
    """A CSV string or an XLSX cell value as one comparable value."""
    if value in ("", None):
        return None
    if column.type == "money":
        return D(str(value)).quantize(D("0.01"))
    if column.type == "number":
        return D(str(value))
    if column.type == "integer":
        return int(value)
    if column.type == "datetime":
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)
        return value
    if column.type == "date":
        return date.fromisoformat(value) if isinstance(value, str) else value.date()
    return str(value)


@pytest.mark.parametrize(
    ("make_rows", "columns"),
    [
        (lambda: exports.register_rows(RegisterFilter(**OCT_ONLY)), REGISTER_COLUMNS),
        (lambda: exports.line_rows(RegisterFilter(**OCT_ONLY)), LINE_COLUMNS),
        (lambda: exports.journal_rows(date(2026, 11, 1), date(2026, 11, 30)), JOURNAL_COLUMNS),
    ],
    ids=["register", "lines", "journal"],
)
def test_csv_and_xlsx_hold_the_same_rows(month, tmp_path, make_rows, columns):
    out = io.StringIO()
    written = exports.write_csv(make_rows(), columns, out)
    csv_rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert csv_rows[0] == [c.name for c in columns]
    assert written == len(csv_rows) - 1 > 0
    path = tmp_path / "export.xlsx"
    assert exports.write_xlsx(make_rows(), columns, path, "Export") == written
    sheet = load_workbook(path).active
    xlsx_rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert list(xlsx_rows[0]) == [c.name for c in columns]
    assert [[_typed(c, v) for c, v in zip(columns, row, strict=True)] for row in xlsx_rows[1:]] == [
        [_typed(c, v) for c, v in zip(columns, row, strict=True)] for row in csv_rows[1:]
    ]
    money = [i for i, c in enumerate(columns) if c.type == "money"]
    first = next(iter(sheet.iter_rows(min_row=2, max_row=2)))
    assert all(first[i].number_format == exports.MONEY_FORMAT for i in money)
    assert all(isinstance(first[i].value, int | float) for i in money)
    dated = [i for i, c in enumerate(columns) if c.type in ("datetime", "date")]
    assert all(isinstance(first[i].value, datetime) for i in dated if first[i].value is not None)


def test_an_empty_period_writes_headers_only(db, tmp_path):
    flt = RegisterFilter(date(2030, 1, 1), date(2030, 3, 1))
    assert list(exports.register_rows(flt)) == []
    assert exports.register_totals(flt) == {} and exports.ageing(flt, date(2031, 1, 1)) == {}
    for rows, columns in (
        (exports.register_rows(flt), REGISTER_COLUMNS),
        (exports.line_rows(flt), LINE_COLUMNS),
        (exports.journal_rows(date(2030, 1, 1), date(2030, 1, 31)), JOURNAL_COLUMNS),
    ):
        out = io.StringIO()
        assert exports.write_csv(rows, columns, out) == 0
        assert out.getvalue() == ",".join(c.name for c in columns) + "\r\n"
    path = tmp_path / "empty.xlsx"
    assert exports.write_xlsx(exports.register_rows(flt), REGISTER_COLUMNS, path, flt.title) == 0
    rows = list(load_workbook(path).active.iter_rows(values_only=True))
    assert rows == [tuple(c.name for c in REGISTER_COLUMNS)]


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"start": date(2026, 10, 1), "end": date(2026, 9, 30)}, "range_reversed"),
        ({"start": date(2024, 1, 1), "end": date(2027, 1, 1)}, "range_too_large"),
        ({"start": OCT, "end": OCT, "statuses": ["paid", "lost"]}, "status_invalid"),
    ],
)
def test_bad_filters_are_refused_with_a_code(arguments, code):
    with pytest.raises(InvalidInput) as caught:
        RegisterFilter(**arguments)
    assert caught.value.code == code


def test_filter_limits():
    assert RegisterFilter(date(2024, 1, 1), date(2026, 12, 31)).months == 36
    assert RegisterFilter(date(2026, 10, 31), date(2026, 10, 1)).months == 1
    with pytest.raises(InvalidInput) as caught:
        exports.journal_rows(date(2026, 11, 2), date(2026, 11, 1)).__next__()
    assert caught.value.code == "range_reversed"


def _synthetic(n):
    for i in range(n):
        yield {
            "number": f"INV-2026-{i:06d}",
            "kind": "invoice",
            "status": "paid",
            "organization": f"Organisation number {i}",
            "organization_slug": f"org-{i}",
            "country": "DE",
            "currency": "USD",
            "period": "2026-10",
            "issued_at": "2026-11-01T00:30:00+00:00",
            "due_at": "2026-11-15T00:30:00+00:00",
            "net": "1234.56",
            "tax": "234.57",
            "gross": "1469.13",
            "paid": "1469.13",
            "outstanding": "0.00",
        }


def test_xlsx_writer_memory_does_not_grow_with_rows(tmp_path):
    def peak(n):
        tracemalloc.start()
        try:
            exports.write_xlsx(_synthetic(n), REGISTER_COLUMNS, tmp_path / f"{n}.xlsx", "Big")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(100)  # imports and caches
    small, large = peak(500), peak(5_000)  # ten times the rows, not twice the memory
    assert large < 2 * small, (small, large)
    written = load_workbook(tmp_path / "5000.xlsx", read_only=True).active
    assert sum(1 for _ in written.iter_rows(values_only=True)) == 5_001


def test_every_export_adds_up_to_the_registers_totals(month):
    """For the same filter, the lines sum to the register's net per currency and the register
    rows to its totals."""
    flt = RegisterFilter(**OCT_ONLY)
    totals = exports.register_totals(flt)
    lines: dict[str, Decimal] = {}
    for row in exports.line_rows(flt):
        lines[row["currency"]] = lines.get(row["currency"], Decimal(0)) + Decimal(row["amount"])
    assert lines == {currency: t["net"] for currency, t in totals.items()}
    rows = list(exports.register_rows(flt))
    for currency, expected in totals.items():
        mine = [r for r in rows if r["currency"] == currency]
        for field in ("net", "tax", "gross", "paid", "outstanding"):
            assert sum(Decimal(r[field]) for r in mine) == expected[field]
