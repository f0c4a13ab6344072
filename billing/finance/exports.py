"""Finance exports, the data layer: the invoice register, its lines, ageing and an accounting
journal, with writers that stream CSV and XLSX. Views and background jobs call these.

**Which invoices** (``RegisterFilter``): a document belongs to the month of its
``period_start`` (the usage month it bills; a credit note carries its invoice's month), not to
the month it was issued, so a register of October is October's usage however late it was
invoiced. ``start`` and ``end`` are inclusive months (any day in them). Drafts are left out
unless ``include_drafts`` is set, and then every title says "includes drafts".

**Columns** (stable names; rows are dicts keyed by them, values strings as the CSV carries
them: amounts are ``Decimal`` strings with 2 places, times ISO 8601 in UTC, empty when none):

- ``REGISTER_COLUMNS``: ``number`` (empty for a draft), ``kind`` (invoice, credit_note),
  ``status`` (draft, finalized, paid, void), ``organization`` (name), ``organization_slug``,
  ``country`` (ISO 3166-1), ``currency``, ``period`` (YYYY-MM), ``issued_at``, ``due_at``,
  ``net`` (subtotal), ``tax``, ``gross`` (total), ``paid`` (what settled it: credits applied
  plus the amount paid, for a paid invoice; otherwise 0), ``outstanding`` (``amount_due`` of a
  finalized, unpaid invoice; otherwise 0). Credit notes carry negative net, tax and gross.
- ``LINE_COLUMNS``: ``invoice_number``, ``position``, ``kind``, ``description``, ``quantity``,
  ``unit``, ``unit_price``, ``amount``, ``currency``.
- ``JOURNAL_COLUMNS``: ``date`` (YYYY-MM-DD, UTC), ``reference``, ``account``, ``debit``,
  ``credit``, ``currency``, ``description``.

**Journal** (``journal_rows``): double entry, in the currency of each document, dated by UTC
day; every ``reference`` is one balanced posting (its debits equal its credits), so the period
balances too. Revenue is recognised when an invoice is issued, from the invoice's rounded
amounts (the ledger's usage debits, rounding and tax of its month add up to minus its total, so
the ledger's full-precision usage entries are not journalled one by one):

- invoice issued: Dr receivable (what is due) and Dr customer credits (``credits_applied``:
  usage consumed from a prepaid balance) / Cr revenue (net), Cr tax payable (tax);
- credit note issued: the reverse, Dr revenue, Dr tax payable / Cr receivable for the part
  that lowered an unpaid invoice's amount due, Cr customer credits for the rest (the ledger's
  ``adjustment``);
- invoice voided: Dr revenue, Dr tax payable / Cr receivable for what was still due;
- invoice payment (ledger ``payment``): Dr bank / Cr receivable;
- top-up (ledger ``top_up``): Dr bank / Cr customer credits;
- grant (ledger ``grant``): Dr promotional credits / Cr customer credits;
- refund (ledger ``refund``): Dr customer credits / Cr bank;
- manual adjustment (ledger ``adjustment`` without a document): Dr adjustments / Cr customer
  credits when credit is given, the reverse when taken.

Account codes are ``JOURNAL_ACCOUNTS``, each overridable with
``settings.BILLING_JOURNAL_ACCOUNTS`` (a dict of the same keys).

**Streaming**: rows come from ``.iterator(chunk_size=...)`` querysets and the writers write
row by row (``openpyxl`` in write-only mode, inline strings), so memory does not grow with the
number of rows. An empty period writes the header only.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any

from django.conf import settings
from django.db.models import Case, DecimalField, F, Q, QuerySet, Sum, Value, When
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.invoicing.services import month_start, next_month
from billing.models import (
    MONEY_DECIMAL_PLACES,
    MONEY_MAX_DIGITS,
    EntryKind,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    LedgerEntry,
)
from portal.errors import InvalidInput
from portal.money import amount_text, decimal_text, money_round

CHUNK_SIZE = 2000
MAX_MONTHS = 36
DRAFTS_NOTE = "includes drafts"


# --- columns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One export column: its stable ``name`` and how XLSX types it (``text``, ``money``,
    ``number``, ``integer``, ``datetime`` or ``date``; CSV writes the row's string as is)."""

    name: str
    type: str = "text"


REGISTER_COLUMNS: tuple[Column, ...] = (
    Column("number"),
    Column("kind"),
    Column("status"),
    Column("organization"),
    Column("organization_slug"),
    Column("country"),
    Column("currency"),
    Column("period"),
    Column("issued_at", "datetime"),
    Column("due_at", "datetime"),
    Column("net", "money"),
    Column("tax", "money"),
    Column("gross", "money"),
    Column("paid", "money"),
    Column("outstanding", "money"),
)

LINE_COLUMNS: tuple[Column, ...] = (
    Column("invoice_number"),
    Column("position", "integer"),
    Column("kind"),
    Column("description"),
    Column("quantity", "number"),
    Column("unit"),
    Column("unit_price", "number"),
    Column("amount", "money"),
    Column("currency"),
)

JOURNAL_COLUMNS: tuple[Column, ...] = (
    Column("date", "date"),
    Column("reference"),
    Column("account"),
    Column("debit", "money"),
    Column("credit", "money"),
    Column("currency"),
    Column("description"),
)

RECONCILIATION_COLUMNS: tuple[Column, ...] = (
    Column("date", "datetime"),
    Column("match"),
    Column("provider"),
    Column("provider_reference"),
    Column("payment_id", "integer"),
    Column("purpose"),
    Column("status"),
    Column("amount", "money"),
    Column("currency"),
    Column("settled"),
    Column("settled_amount", "money"),
    Column("difference", "money"),
)

AGEING_BUCKETS = ("0-30", "31-60", "61-90", "90+")

JOURNAL_ACCOUNTS: dict[str, str] = {
    "bank": "1200",
    "receivable": "1100",
    "customer_credits": "2300",
    "tax_payable": "2200",
    "revenue": "4000",
    "adjustments": "4900",
    "promotional_credits": "6100",
}


def journal_accounts() -> dict[str, str]:
    """``JOURNAL_ACCOUNTS`` with ``settings.BILLING_JOURNAL_ACCOUNTS`` over it."""
    return {**JOURNAL_ACCOUNTS, **getattr(settings, "BILLING_JOURNAL_ACCOUNTS", {})}


# --- the filter -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterFilter:
    """Which documents an export covers: ``period_start`` months from ``start`` to ``end``
    (inclusive, any day of the month), optionally only some statuses, one currency, one
    organisation (id) or one buyer country (ISO code). Validated when made."""

    start: date
    end: date
    statuses: tuple[str, ...] = ()
    currency: str | None = None
    organization_id: int | None = None
    country: str | None = None
    include_drafts: bool = False
    invoice_ids: tuple[int, ...] = ()  # only these documents (admin: "export selected")
    months: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        first, last = month_start(self.start), month_start(self.end)
        if last < first:
            raise InvalidInput(
                _("The period ends (%(last)s) before it starts (%(first)s).")
                % {"last": format(last, "%Y-%m"), "first": format(first, "%Y-%m")},
                code=BillingErrorCode.RANGE_REVERSED,
            )
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        if months > MAX_MONTHS:
            raise InvalidInput(
                _("Export at most %(max)s months at a time, not %(months)s.")
                % {"max": MAX_MONTHS, "months": months},
                code=BillingErrorCode.RANGE_TOO_LARGE,
                details={"months": months, "max_months": MAX_MONTHS},
            )
        unknown = sorted(set(self.statuses) - set(InvoiceStatus.values))
        if unknown:
            raise InvalidInput(
                _("Unknown status %(unknown)s; use %(values)s.")
                % {"unknown": ", ".join(unknown), "values": ", ".join(InvoiceStatus.values)},
                code=BillingErrorCode.STATUS_INVALID,
                details={"statuses": unknown},
            )
        object.__setattr__(self, "statuses", tuple(self.statuses))
        object.__setattr__(self, "invoice_ids", tuple(self.invoice_ids))
        object.__setattr__(self, "months", months)

    @property
    def title(self) -> str:
        """A title for a sheet (at most 31 characters) or a CSV preamble."""
        first, last = month_start(self.start), month_start(self.end)
        span = f"{first:%Y-%m}" if first == last else f"{first:%Y-%m} to {last:%Y-%m}"
        return f"{span} ({DRAFTS_NOTE})" if self.include_drafts else span


def _invoices(flt: RegisterFilter) -> QuerySet[Invoice]:
    found = Invoice.objects.filter(
        period_start__gte=month_start(flt.start),
        period_start__lt=next_month(month_start(flt.end)),
    )
    if not flt.include_drafts:
        found = found.exclude(status=InvoiceStatus.DRAFT)
    if flt.statuses:
        found = found.filter(status__in=flt.statuses)
    if flt.currency:
        found = found.filter(currency=flt.currency)
    if flt.organization_id is not None:
        found = found.filter(organization_id=flt.organization_id)
    if flt.country:
        found = found.filter(organization__country=flt.country.upper())
    if flt.invoice_ids:
        found = found.filter(pk__in=flt.invoice_ids)
    return found


def _money_field() -> DecimalField:
    return DecimalField(max_digits=MONEY_MAX_DIGITS, decimal_places=MONEY_DECIMAL_PLACES)


def _paid_expression():
    return Case(
        When(status=InvoiceStatus.PAID, then=F("credits_applied") + F("amount_due")),
        default=Value(Decimal(0)),
        output_field=_money_field(),
    )


def _outstanding_expression():
    return Case(
        When(
            kind=InvoiceKind.INVOICE,
            status=InvoiceStatus.FINALIZED,
            then=F("amount_due"),
        ),
        default=Value(Decimal(0)),
        output_field=_money_field(),
    )


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


# --- the register -----------------------------------------------------------------------------


def register_rows(flt: RegisterFilter) -> Iterator[dict[str, str]]:
    """The register: one row per invoice or credit note (``REGISTER_COLUMNS``), by month,
    then number (drafts last in their month)."""
    found = (
        _invoices(flt)
        .annotate(paid_amount=_paid_expression(), outstanding_amount=_outstanding_expression())
        .order_by("period_start", F("number").asc(nulls_last=True), "pk")
        .values(
            "number",
            "kind",
            "status",
            "organization__name",
            "organization__slug",
            "organization__country",
            "currency",
            "period_start",
            "issued_at",
            "due_at",
            "subtotal",
            "tax",
            "total",
            "paid_amount",
            "outstanding_amount",
        )
    )
    for row in found.iterator(chunk_size=CHUNK_SIZE):
        yield {
            "number": row["number"] or "",
            "kind": row["kind"],
            "status": row["status"],
            "organization": row["organization__name"],
            "organization_slug": row["organization__slug"],
            "country": str(row["organization__country"] or ""),
            "currency": row["currency"],
            "period": f"{row['period_start']:%Y-%m}",
            "issued_at": _iso(row["issued_at"]),
            "due_at": _iso(row["due_at"]),
            "net": amount_text(row["subtotal"], row["currency"]),
            "tax": amount_text(row["tax"], row["currency"]),
            "gross": amount_text(row["total"], row["currency"]),
            "paid": amount_text(row["paid_amount"], row["currency"]),
            "outstanding": amount_text(row["outstanding_amount"], row["currency"]),
        }


TOTAL_FIELDS = ("net", "tax", "gross", "paid", "outstanding")


def register_totals(flt: RegisterFilter) -> dict[str, dict[str, Decimal]]:
    """The register's sums per currency, in one aggregate query:
    ``{"USD": {"net": ..., "tax": ..., "gross": ..., "paid": ..., "outstanding": ...}}``."""
    rows = (
        _invoices(flt)
        .order_by()
        .values("currency")
        .annotate(
            net=Sum("subtotal"),
            tax_sum=Sum("tax"),
            gross=Sum("total"),
            paid=Sum(_paid_expression()),
            outstanding=Sum(_outstanding_expression()),
        )
        .order_by("currency")
    )
    return {
        row["currency"]: {
            "net": _sum(row["net"], row["currency"]),
            "tax": _sum(row["tax_sum"], row["currency"]),
            "gross": _sum(row["gross"], row["currency"]),
            "paid": _sum(row["paid"], row["currency"]),
            "outstanding": _sum(row["outstanding"], row["currency"]),
        }
        for row in rows
    }


def _sum(value, currency: str) -> Decimal:
    """An aggregate's sum of rounded amounts as an exact Decimal with the currency's places, on
    every database: PostgreSQL's numeric sum is exact and keeps them; SQLite sums in floating
    point and answers 32 for 32.00 (Django reads it back to 15 digits), which rounding to the
    currency's minor unit makes exact again. No rows (NULL) is 0, as before."""
    return Decimal(0) if value is None else money_round(value, currency)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def ageing(flt: RegisterFilter, today: date) -> dict[str, dict[str, Decimal]]:
    """Overdue amounts per currency and bucket of days past due (``AGEING_BUCKETS``): the
    ``amount_due`` of finalized, unpaid invoices of the filter whose due date (UTC day) is
    before ``today``. One aggregate query."""
    now = _midnight(today)
    bounds = {
        "0-30": Q(due_at__gte=now - timedelta(days=30)),
        "31-60": Q(due_at__gte=now - timedelta(days=60), due_at__lt=now - timedelta(days=30)),
        "61-90": Q(due_at__gte=now - timedelta(days=90), due_at__lt=now - timedelta(days=60)),
        "90+": Q(due_at__lt=now - timedelta(days=90)),
    }
    rows = (
        _invoices(flt)
        .filter(
            kind=InvoiceKind.INVOICE,
            status=InvoiceStatus.FINALIZED,
            amount_due__gt=0,
            due_at__lt=now,
        )
        .order_by()
        .values("currency")
        .annotate(
            **{
                f"b{i}": Sum("amount_due", filter=condition)
                for i, condition in enumerate(bounds.values())
            }
        )
        .order_by("currency")
    )
    return {
        row["currency"]: {
            name: _sum(row[f"b{i}"], row["currency"]) for i, name in enumerate(AGEING_BUCKETS)
        }
        for row in rows
    }


def line_rows(flt: RegisterFilter) -> Iterator[dict[str, str]]:
    """The lines of the filter's documents (``LINE_COLUMNS``), in register order."""
    invoices = _invoices(flt).values("pk")
    found = (
        InvoiceLine.objects.filter(invoice__in=invoices)
        .order_by(
            "invoice__period_start",
            F("invoice__number").asc(nulls_last=True),
            "invoice_id",
            "position",
        )
        .values_list(
            "invoice__number",
            "position",
            "kind",
            "description",
            "quantity",
            "unit",
            "unit_price",
            "amount",
            "invoice__currency",
        )
    )
    for (
        number,
        position,
        kind,
        description,
        quantity,
        unit,
        price,
        amount,
        currency,
    ) in found.iterator(chunk_size=CHUNK_SIZE):
        yield {
            "invoice_number": number or "",
            "position": str(position),
            "kind": kind,
            "description": description,
            "quantity": decimal_text(quantity),
            "unit": unit,
            "unit_price": "" if price is None else decimal_text(price),
            "amount": amount_text(amount, currency),
            "currency": currency,
        }


# --- the journal ------------------------------------------------------------------------------


def _day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    if end < start:
        raise InvalidInput(
            _("The period ends (%(end)s) before it starts (%(start)s).")
            % {"end": end, "start": start},
            code=BillingErrorCode.RANGE_REVERSED,
        )
    return _midnight(start), _midnight(end + timedelta(days=1))


def journal_rows(start: date, end: date) -> Iterator[dict[str, str]]:
    """The accounting journal of the UTC days ``start`` to ``end`` (inclusive): the documents
    issued or voided and the ledger's cash and credit movements in them, as balanced
    postings (``JOURNAL_COLUMNS``), documents first, then ledger entries, each by time."""
    since, until = _day_bounds(start, end)
    accounts = journal_accounts()
    for posting in _document_postings(since, until):
        yield from posting.rows(accounts)
    for posting in _ledger_postings(since, until):
        yield from posting.rows(accounts)


@dataclass
class _Posting:
    when: datetime
    reference: str
    currency: str
    description: str
    debits: list[tuple[str, Decimal]] = field(default_factory=list)
    credits: list[tuple[str, Decimal]] = field(default_factory=list)

    def debit(self, account: str, amount: Decimal) -> None:
        if amount:
            self.debits.append((account, amount))

    def credit(self, account: str, amount: Decimal) -> None:
        if amount:
            self.credits.append((account, amount))

    def rows(self, accounts: dict[str, str]) -> Iterator[dict[str, str]]:
        day = self.when.astimezone(UTC).date().isoformat()
        for side, entries in (("debit", self.debits), ("credit", self.credits)):
            for account, amount in entries:
                yield {
                    "date": day,
                    "reference": self.reference,
                    "account": accounts[account],
                    "debit": amount_text(amount if side == "debit" else 0, self.currency),
                    "credit": amount_text(amount if side == "credit" else 0, self.currency),
                    "currency": self.currency,
                    "description": self.description,
                }


def _document_postings(since: datetime, until: datetime) -> Iterator[_Posting]:
    issued = (
        Invoice.objects.filter(issued_at__gte=since, issued_at__lt=until)
        .exclude(status=InvoiceStatus.DRAFT)
        .select_related("corrects")
        .defer("pdf", "corrects__pdf")
        .order_by("issued_at", "pk")
    )
    for invoice in issued.iterator(chunk_size=CHUNK_SIZE):
        if invoice.kind == InvoiceKind.INVOICE:
            yield _invoice_posting(invoice)
        else:
            yield _credit_note_posting(invoice)
    voided = (
        Invoice.objects.filter(
            kind=InvoiceKind.INVOICE,
            status=InvoiceStatus.VOID,
            voided_at__gte=since,
            voided_at__lt=until,
        )
        .defer("pdf")
        .order_by("voided_at", "pk")
    )
    for invoice in voided.iterator(chunk_size=CHUNK_SIZE):
        yield _void_posting(invoice)


def _invoice_posting(invoice: Invoice) -> _Posting:
    posting = _Posting(
        invoice.issued_at, invoice.number, invoice.currency, f"Invoice {invoice.number}"
    )
    credits_applied = invoice.credits_applied
    posting.debit("receivable", invoice.total - credits_applied)
    posting.debit("customer_credits", credits_applied)
    posting.credit("revenue", invoice.subtotal)
    posting.credit("tax_payable", invoice.tax)
    return posting


def _earlier_notes_total(note: Invoice) -> Decimal:
    """The totals (negative) of the credit notes of the same invoice issued before ``note``."""
    return Invoice.objects.filter(
        corrects_id=note.corrects_id, kind=InvoiceKind.CREDIT_NOTE, pk__lt=note.pk
    ).exclude(status=InvoiceStatus.DRAFT).aggregate(total=Sum("total"))["total"] or Decimal(0)


def _credit_note_posting(note: Invoice) -> _Posting:
    """A credit note credits the customer's ledger; the part that lowered what an invoiced,
    not yet paid invoice still owed comes off the receivable."""
    corrected = note.corrects
    posting = _Posting(
        note.issued_at,
        note.number,
        note.currency,
        f"Credit note {note.number} for {corrected.number}",
    )
    credited = -note.total
    to_receivable = Decimal(0)
    paid_before = (
        corrected.status == InvoiceStatus.PAID
        and corrected.paid_at is not None
        and corrected.paid_at < note.issued_at
    )
    if corrected.billing_mode == "invoiced" and corrected.credits_applied == 0 and not paid_before:
        open_before = max(Decimal(0), corrected.total + _earlier_notes_total(note))
        to_receivable = min(credited, open_before)
    posting.debit("revenue", -note.subtotal)
    posting.debit("tax_payable", -note.tax)
    posting.credit("receivable", to_receivable)
    posting.credit("customer_credits", credited - to_receivable)
    return posting


def _void_posting(invoice: Invoice) -> _Posting:
    """What was still due is cancelled: the invoice's net and tax less its credit notes."""
    notes = (
        Invoice.objects.filter(corrects=invoice, kind=InvoiceKind.CREDIT_NOTE)
        .exclude(status=InvoiceStatus.DRAFT)
        .aggregate(subtotal=Sum("subtotal"), tax=Sum("tax"))
    )
    net = invoice.subtotal + (notes["subtotal"] or 0)
    tax = invoice.tax + (notes["tax"] or 0)
    posting = _Posting(
        invoice.voided_at,
        f"{invoice.number}/void",
        invoice.currency,
        f"Invoice {invoice.number} voided",
    )
    posting.debit("revenue", net)
    posting.debit("tax_payable", tax)
    posting.credit("receivable", net + tax)
    return posting


LEDGER_JOURNAL_KINDS = (
    EntryKind.PAYMENT,
    EntryKind.TOP_UP,
    EntryKind.GRANT,
    EntryKind.REFUND,
    EntryKind.ADJUSTMENT,
)


def _ledger_postings(since: datetime, until: datetime) -> Iterator[_Posting]:
    """Cash and credit movements. Usage, rounding and tax entries, and the adjustments of
    credit notes and voids, are the documents' postings, so they are not repeated here."""
    entries = (
        LedgerEntry.objects.filter(
            created_at__gte=since, created_at__lt=until, kind__in=LEDGER_JOURNAL_KINDS
        )
        .exclude(kind=EntryKind.ADJUSTMENT, invoice__isnull=False)
        .select_related("invoice")
        .only(
            "pk",
            "kind",
            "amount",
            "currency",
            "created_at",
            "reference",
            "description",
            "invoice__number",
        )
        .order_by("created_at", "pk")
    )
    for entry in entries.iterator(chunk_size=CHUNK_SIZE):
        amount = _ledger_money(entry.amount, entry.currency)
        prefix = {
            EntryKind.PAYMENT: "PAY",
            EntryKind.TOP_UP: "TOPUP",
            EntryKind.GRANT: "GRANT",
            EntryKind.REFUND: "REFUND",
            EntryKind.ADJUSTMENT: "ADJ",
        }[entry.kind]
        posting = _Posting(
            entry.created_at, f"{prefix}-{entry.pk}", entry.currency, entry.description[:200]
        )
        if entry.kind == EntryKind.PAYMENT:
            if entry.invoice is not None:
                posting.description = f"Payment of {entry.invoice.number}"
            posting.debit("bank", amount)
            posting.credit("receivable", amount)
        elif entry.kind == EntryKind.TOP_UP:
            posting.debit("bank", amount)
            posting.credit("customer_credits", amount)
        elif entry.kind == EntryKind.GRANT:
            posting.debit("promotional_credits", amount)
            posting.credit("customer_credits", amount)
        elif entry.kind == EntryKind.REFUND:
            posting.debit("customer_credits", -amount)
            posting.credit("bank", -amount)
        elif amount > 0:  # a manual adjustment giving credit
            posting.debit("adjustments", amount)
            posting.credit("customer_credits", amount)
        else:
            posting.debit("customer_credits", -amount)
            posting.credit("adjustments", -amount)
        if posting.debits:
            yield posting


def _ledger_money(amount: Decimal, currency: str) -> Decimal:
    """Cash movements are whole cents; a full-precision manual adjustment is taken to the
    cent by the rounding rule (both sides alike, so the posting still balances)."""
    return money_round(amount, currency)


# --- writers ----------------------------------------------------------------------------------


def write_csv(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[Column],
    file: IO[str],
    *,
    title: str | None = None,
) -> int:
    """Write the rows to a text file as CSV, one at a time: an optional one-cell title line
    (e.g. ``RegisterFilter.title``, which says when drafts are included), the header of the
    column names, then the rows. Returns how many rows were written."""
    writer = csv.writer(file, lineterminator="\r\n")
    if title:
        writer.writerow([title])
    writer.writerow([column.name for column in columns])
    written = 0
    for row in rows:
        writer.writerow([row.get(column.name, "") for column in columns])
        written += 1
    return written


MONEY_FORMAT = "#,##0.00"
NUMBER_FORMAT = "0.############"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
DATE_FORMAT = "yyyy-mm-dd"
INVALID_SHEET_CHARACTERS = str.maketrans({c: "-" for c in "[]:*?/\\"})


def sheet_title(title: str) -> str:
    """A title Excel accepts for a sheet: no ``[]:*?/\\``, at most 31 characters (the drafts
    note is kept when the title is cut)."""
    title = title.translate(INVALID_SHEET_CHARACTERS).strip() or "Export"
    if len(title) <= 31:
        return title
    if title.endswith(f"({DRAFTS_NOTE})"):
        note = f" ({DRAFTS_NOTE})"
        return title[: 31 - len(note)].rstrip() + note
    return title[:31]


def write_xlsx(
    rows: Iterable[dict[str, Any]],
    columns: Sequence[Column],
    file: IO[bytes] | str,
    sheet_title_text: str = "Export",
) -> int:
    """Write the rows to an XLSX workbook of one sheet, streaming (openpyxl write-only mode):
    the header of the column names, then the rows; money as numbers with 2 decimals, other
    numbers as numbers, times and dates as Excel dates (UTC). Returns how many rows."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title=sheet_title(sheet_title_text))
    sheet.append([column.name for column in columns])
    written = 0
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column.name, "")
            cell = WriteOnlyCell(sheet, value=_xlsx_value(column.type, value))
            if column.type == "money":
                cell.number_format = MONEY_FORMAT
            elif column.type == "number":
                cell.number_format = NUMBER_FORMAT
            elif column.type == "datetime":
                cell.number_format = DATETIME_FORMAT
            elif column.type == "date":
                cell.number_format = DATE_FORMAT
            cells.append(cell)
        sheet.append(cells)
        written += 1
    workbook.save(file)
    return written


def _xlsx_value(kind: str, value: Any) -> Any:
    if value in ("", None):
        return None
    if kind in ("money", "number"):
        return Decimal(value)
    if kind == "integer":
        return int(value)
    if kind == "datetime":
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return moment
    if kind == "date":
        return date.fromisoformat(value) if isinstance(value, str) else value
    return str(value)


# --- payment reconciliation -------------------------------------------------------------------


def reconciliation_rows(start: date, end: date) -> Iterator[dict[str, str]]:
    """Each payment-provider transaction of the UTC days ``start`` to ``end`` against what it
    settled (``RECONCILIATION_COLUMNS``), then what is unmatched on either side:

    - ``matched``: a succeeded payment and its top-up credit, or the invoice it paid, for the
      same amount (refunds: the refund and its ledger debit);
    - ``unmatched_payment``: a succeeded payment or refund the ledger or invoice does not show
      (or shows for another amount: see ``difference``);
    - ``unmatched_ledger``: a top-up or invoice payment in the ledger with no provider
      transaction (e.g. a bank transfer entered by finance).

    Failed and pending payments are listed as ``not_settled`` for completeness."""
    from billing.models import Payment, PaymentStatus, Refund

    since, until = _day_bounds(start, end)
    payments = (
        Payment.objects.filter(created_at__gte=since, created_at__lt=until)
        .select_related("invoice")
        .prefetch_related("entries")
        .order_by("created_at", "pk")
    )
    for payment in payments.iterator(chunk_size=CHUNK_SIZE):
        row = {
            "date": _iso(payment.succeeded_at or payment.created_at),
            "provider": payment.provider,
            "provider_reference": payment.payment_intent_id or payment.checkout_id,
            "payment_id": str(payment.pk),
            "purpose": payment.purpose,
            "status": payment.status,
            "amount": amount_text(payment.amount, payment.currency),
            "currency": payment.currency,
        }
        if payment.status != PaymentStatus.SUCCEEDED:
            yield {**row, "match": "not_settled", "settled": "", "settled_amount": "",
                   "difference": ""}  # fmt: skip
            continue
        if payment.invoice_id:
            invoice = payment.invoice
            settled = invoice.number or ""
            settled_amount = invoice.amount_due if invoice.status == "paid" else Decimal(0)
            paid = invoice.status == "paid" and invoice.paid_reference in (
                payment.payment_intent_id,
                f"payment {payment.pk}",
            )
            settled_amount = settled_amount if paid else Decimal(0)
        else:
            credits = [e for e in payment.entries.all() if e.kind == EntryKind.TOP_UP]
            settled = ", ".join(f"ledger {e.pk}" for e in credits)
            settled_amount = sum((e.amount for e in credits), Decimal(0))
        difference = payment.amount - settled_amount
        yield {
            **row,
            "match": "matched" if difference == 0 else "unmatched_payment",
            "settled": settled,
            "settled_amount": amount_text(settled_amount, payment.currency),
            "difference": amount_text(difference, payment.currency),
        }
    refunds = (
        Refund.objects.filter(created_at__gte=since, created_at__lt=until, status="succeeded")
        .select_related("payment")
        .order_by("created_at", "pk")
    )
    for refund in refunds.iterator(chunk_size=CHUNK_SIZE):
        payment = refund.payment
        debit = LedgerEntry.objects.filter(
            kind=EntryKind.REFUND, payment=payment, reference=refund.provider_id
        ).first()
        settled_amount = -debit.amount if debit is not None else Decimal(0)
        if payment.purpose == "invoice":
            settled_amount = refund.amount  # invoice refunds are settled by credit notes
        difference = refund.amount - settled_amount
        yield {
            "date": _iso(refund.created_at),
            "match": "matched" if difference == 0 else "unmatched_payment",
            "provider": payment.provider,
            "provider_reference": refund.provider_id,
            "payment_id": str(payment.pk),
            "purpose": "refund",
            "status": refund.status,
            "amount": amount_text(-refund.amount, payment.currency),
            "currency": payment.currency,
            "settled": f"ledger {debit.pk}" if debit is not None else "",
            "settled_amount": amount_text(-settled_amount, payment.currency),
            "difference": amount_text(-difference, payment.currency),
        }
    orphans = (
        LedgerEntry.objects.filter(
            created_at__gte=since,
            created_at__lt=until,
            kind__in=[EntryKind.TOP_UP, EntryKind.PAYMENT],
            payment__isnull=True,
        )
        .exclude(kind=EntryKind.PAYMENT, invoice__payments__status="succeeded")
        .select_related("invoice")
        .order_by("created_at", "pk")
    )
    for entry in orphans.iterator(chunk_size=CHUNK_SIZE):
        yield {
            "date": _iso(entry.created_at),
            "match": "unmatched_ledger",
            "provider": "",
            "provider_reference": entry.reference,
            "payment_id": "",
            "purpose": entry.kind,
            "status": "",
            "amount": "",
            "currency": entry.currency,
            "settled": (entry.invoice.number if entry.invoice_id else f"ledger {entry.pk}") or "",
            "settled_amount": amount_text(entry.amount, entry.currency),
            "difference": amount_text(-entry.amount, entry.currency),
        }
