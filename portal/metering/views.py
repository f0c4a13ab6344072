"""The usage page and its CSV download.

Both read ``usage_summary`` (the selector behind ``GET /api/v1/usage``), so the page, the CSV
and the API always show the same figures. The page rounds quantities and costs for display
only; the CSV has them at full precision.

CSV columns (``/usage/export.csv?start=YYYY-MM-DD&end=YYYY-MM-DD&group_by=day``; ``group_by``
is ``day``, ``instance``, ``instance_type`` or ``meter``; both dates are UTC days, included):

- ``group``: the grouping asked for (``day``, ...); ``TOTAL`` on the last row;
- ``key``: the row's key in ``GET /api/v1/usage`` (``2026-11-03``, ``instance:42``,
  ``type:7``, ``volumes``, ``instance.seconds``, ...);
- ``label``: the row's label in the API (the day, instance name, type name or meter key);
- ``meter``: the meter's key; one line per (row, meter) the row has usage on;
- ``quantity``: that meter's quantity in the row, at full precision;
- ``unit``: the meter's unit (``second``, ``GB-second``, ...);
- ``cost``: what that quantity costs, at full precision, as a plain decimal string (no
  rounding, no exponent); on the ``TOTAL`` row, the range's total (the API's ``total_cost``);
- ``currency``: the organisation's currency.

A row with one meter has one line whose cost is the API's ``cost`` of that row, exactly. A row
with several meters is split by meter from the same records with the same prices; its lines
add up to the API's ``cost`` of the row up to the last of Decimal's 28 significant digits (the
rater's figures are rounded there, so sums in another order may differ in that digit).
"""

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET

from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.metering import selectors
from portal.metering.forms import UsageExportForm, UsageRangeForm, presets
from portal.metering.lifecycle_usage import BOOT_DISK, COMPUTE, NO_GPU, VOLUME
from portal.metering.models import Meter
from portal.metering.rating import SECONDS_PER_HOUR, SECONDS_PER_MONTH
from portal.money import format_amount, round_half_up, with_currency

TEMPLATE = "metering/usage.html"
SHORT_NAMES = {
    COMPUTE: gettext_lazy("Running time"),
    NO_GPU: gettext_lazy("No-GPU mode"),
    BOOT_DISK: gettext_lazy("Kept boot disk"),
    VOLUME: gettext_lazy("Volumes"),
}
TABLES = (
    ("instance_type", gettext_lazy("By instance type"), gettext_lazy("Instance type")),
    ("instance", gettext_lazy("By instance"), gettext_lazy("Instance or volume")),
)

# --- display ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterColumn:
    key: str
    heading: str
    unit: str  # the meter's own unit
    shown_unit: str  # what the page shows (hours, GB-months, or the meter's unit)
    divisor: Decimal

    def show(self, quantity: Decimal) -> str:
        value = quantity / self.divisor
        if self.divisor == 1 and value == value.to_integral_value():
            return f"{value:,.0f}"
        rounded = round_half_up(value, 2)
        if value > 0 and rounded == 0:
            return "< 0.01"
        return f"{rounded:,.2f}"


def meter_columns(keys: set[str]) -> list[MeterColumn]:
    """Built-in meters first (running time, no-GPU mode, kept disk, volumes), then the others
    by key. Seconds are shown as hours and GB-seconds as GB-months (730 hours)."""
    meters = {m.key: m for m in Meter.objects.filter(key__in=keys)}
    built_in = (COMPUTE, NO_GPU, BOOT_DISK, VOLUME)
    order = [k for k in built_in if k in keys] + sorted(keys - set(built_in))
    columns = []
    for key in order:
        meter = meters.get(key)
        unit = meter.unit if meter else ""
        name = SHORT_NAMES.get(key) or (meter.name if meter else key)
        if unit == "second":
            shown, divisor = _("hours"), SECONDS_PER_HOUR
        elif unit == "GB-second":
            shown, divisor = _("GB-months"), SECONDS_PER_MONTH
        else:
            shown, divisor = unit, Decimal(1)
        columns.append(MeterColumn(key, name, unit, shown, divisor))
    return columns


def day_label(day: date) -> str:
    return f"{date_format(day, 'D')} {date_format(day)}"


def usage_table(summary: selectors.UsageSummary, columns: list[MeterColumn]) -> dict:
    """Rows of display strings, and the totals (full precision sums, rounded once)."""
    rows = []
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for row in summary.rows:
        for key, quantity in row.quantities.items():
            totals[key] += quantity
        link, label = None, row.label
        if row.key.startswith("instance:"):
            link = reverse("compute:instance_detail", args=[int(row.key.split(":", 1)[1])])
        if summary.group_by == "day":
            label = day_label(date.fromisoformat(row.key))
        rows.append(
            {
                "key": row.key,
                "label": label,
                "link": link,
                "quantities": [
                    c.show(row.quantities[c.key]) if c.key in row.quantities else "—"
                    for c in columns
                ],
                "cost": format_amount(row.cost, summary.currency),
            }
        )
    return {
        "rows": rows,
        "totals": [c.show(totals[c.key]) for c in columns],
        "total_cost": format_amount(summary.total_cost, summary.currency),
    }


# --- the chart --------------------------------------------------------------------------------

CHART_WIDTH, CHART_HEIGHT = 640, 240
PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 8, 12, 30
MAX_BAR_WIDTH = 48
MAX_X_LABELS = 12  # every other one is hidden on a phone (class "minor")
# Room for a y label: the phone's font (22 units of the view box, about 11 px there) needs
# about 13 units a character.
UNITS_PER_CHARACTER = 13


def nice_step(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is at least ``value`` (0.25 for nothing)."""
    if value <= 0:
        return Decimal("0.25")
    power = Decimal(1).scaleb(value.adjusted())
    for multiple in (1, 2, Decimal("2.5"), 5, 10):
        if value <= multiple * power:
            return multiple * power
    return 10 * power  # unreachable: value < 10 x power


def day_chart(days: list[date], costs: dict[str, Decimal], currency: str) -> dict:
    """Bars of cost per day with four gridlines, laid out here so the template only draws them
    (inline SVG, scaled to the page's width by its view box)."""
    values = [costs.get(day.isoformat(), Decimal(0)) for day in days]
    step = nice_step(max(values, default=Decimal(0)) / 4)
    top = float(step * 4)
    tick_texts = [f"{(step * i).normalize():,f}" for i in range(5)]
    left = 12 + UNITS_PER_CHARACTER * max(len(t) for t in tick_texts)
    plot_width = CHART_WIDTH - left - PLOT_RIGHT
    plot_height = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM
    bottom = PLOT_TOP + plot_height
    slot = plot_width / max(len(days), 1)
    width = min(max(slot * 0.72, 1.0), MAX_BAR_WIDTH)
    bars = []
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        height = plot_height * float(value) / top
        bars.append(
            {
                "x": round(left + i * slot + (slot - width) / 2, 2),
                "y": round(bottom - height, 2),
                "width": round(width, 2),
                "height": round(height, 2),
                "title": f"{day_label(day)}: {with_currency(format_amount(value, currency), currency)}",
            }
        )
    label_every = max(1, math.ceil(len(days) / MAX_X_LABELS))
    x_labels = [
        {
            "x": round(left + (i + 0.5) * slot, 2),
            "text": date_format(day, "MONTH_DAY_FORMAT"),
            "minor": (i // label_every) % 2 == 1,
        }
        for i, day in enumerate(days)
        if i % label_every == 0
    ]
    ticks = [
        {"y": round(bottom - plot_height * i / 4, 2), "text": text}
        for i, text in enumerate(tick_texts)
    ]
    peak = max(range(len(values)), key=values.__getitem__) if values else None
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": left,
        "tick_x": left - 8,
        "right": CHART_WIDTH - PLOT_RIGHT,
        "bottom": bottom,
        "label_y": bottom + 20,
        "bars": bars,
        "x_labels": x_labels,
        "ticks": ticks,
        "peak": (
            f"{day_label(days[peak])}, {with_currency(format_amount(values[peak], currency), currency)}"
            if peak is not None and values[peak] > 0
            else None
        ),
    }


# --- the page ---------------------------------------------------------------------------------


def _query(start: date, end: date, **extra) -> str:
    return urlencode({"start": start.isoformat(), "end": end.isoformat(), **extra})


def _usage_context(request: HttpRequest, form: UsageRangeForm, today: date) -> dict:
    org = request.organization
    base = reverse("metering:usage")
    context = {
        "form": form,
        "currency": org.currency,
        "presets": [
            {
                "label": p.label,
                "url": f"{base}?{_query(p.start, p.end)}",
                "start": p.start,
                "end": p.end,
            }
            for p in presets(today)
        ],
    }
    if not form.is_valid():
        return context
    first, last = form.cleaned_data["start"], form.cleaned_data["end"]
    start, end = form.instants()
    now = timezone.now()  # one moment for every figure on the page
    summaries = {
        group: selectors.usage_summary(
            organization=org, start=start, end=end, group_by=group, now=now
        )
        for group in ("day", "instance_type", "instance")
    }
    by_day = summaries["day"]
    columns = meter_columns({key for row in by_day.rows for key in row.quantities})
    chart_days = [first + timedelta(days=i) for i in range((min(last, today) - first).days + 1)]
    export = reverse("metering:usage_export")
    context.update(
        {
            "first": first,
            "last": last,
            "now": now,
            "open_range": last >= today,  # the figures still grow
            "has_usage": bool(by_day.rows),
            "total_cost": format_amount(by_day.total_cost, org.currency),
            "total_cost_text": with_currency(
                format_amount(by_day.total_cost, org.currency), org.currency
            ),
            "columns": columns,
            "chart": day_chart(chart_days, {r.key: r.cost for r in by_day.rows}, org.currency),
            "day_table": usage_table(by_day, columns),
            "tables": [
                {"id": f"by-{group.replace('_', '-')}", "title": title, "heading": heading}
                | usage_table(summaries[group], columns)
                for group, title, heading in TABLES
            ],
            "downloads": [
                (label, f"{export}?{_query(first, last, group_by=group)}")
                for group, label in (
                    ("day", _("by day")),
                    ("instance_type", _("by instance type")),
                    ("instance", _("by instance")),
                    ("meter", _("by meter")),
                )
            ],
        }
    )
    return context


@org_page(Action.INSTANCE_VIEW)
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    form = UsageRangeForm(request.GET, today=today)
    context = _usage_context(request, form, today)
    status = 200 if form.is_valid() else 422
    name = f"{TEMPLATE}#usage-panel" if request.htmx else TEMPLATE
    return render(request, name, context, status=status)


# --- the CSV ----------------------------------------------------------------------------------

CSV_COLUMNS = ("group", "key", "label", "meter", "quantity", "unit", "cost", "currency")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def plain(value: Decimal) -> str:
    """A decimal string without an exponent and without rounding (``0E-30`` → ``0.000…``)."""
    return format(value, "f")


def _text(value: str) -> str:
    """Text a spreadsheet would take for a formula is quoted (OWASP CSV injection)."""
    return f"'{value}" if value.startswith(FORMULA_START) else value


@org_page(Action.INSTANCE_VIEW)
@require_GET
def usage_export(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    form = UsageExportForm(request.GET, today=today)
    if not form.is_valid():
        lines = [f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()]
        return HttpResponse(
            "\n".join(lines) + "\n", status=422, content_type="text/plain; charset=utf-8"
        )
    org = request.organization
    start, end = form.instants()
    group_by = form.cleaned_data["group_by"]
    now = timezone.now()
    summary = selectors.usage_summary(
        organization=org, start=start, end=end, group_by=group_by, now=now
    )
    units = {m.key: m.unit for m in Meter.objects.all()}
    first, last = form.cleaned_data["start"], form.cleaned_data["end"]
    filename = f"usage-{org.slug}-{first.isoformat()}-{last.isoformat()}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in summary.rows:
        for meter, quantity in sorted(row.quantities.items()):
            cost = row.costs[meter]
            writer.writerow(
                (
                    group_by,
                    _text(row.key),
                    _text(row.label),
                    meter,
                    plain(quantity),
                    units.get(meter, ""),
                    plain(cost),
                    summary.currency,
                )
            )
    writer.writerow(
        (
            "TOTAL",
            "",
            f"{first.isoformat()} to {last.isoformat()}",
            "",
            "",
            "",
            plain(summary.total_cost),
            summary.currency,
        )
    )
    return response
