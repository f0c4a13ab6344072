"""The usage page's date range, and the CSV export's grouping.

Dates are UTC days and both ends are included: ``start=2026-11-01&end=2026-11-30`` is the
instant range [2026-11-01T00:00Z, 2026-12-01T00:00Z), which is what ``usage_summary`` and
``GET /api/v1/usage`` are given.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from portal.accounts.forms import PortalForm
from portal.metering.selectors import GROUPS

# The API's limit (``UsageQuerySerializer``): at most 400 days at a time.
MAX_DAYS = 400
REVERSED = _("The end date is before the start date.")
TOO_LONG = format_lazy(_("Choose at most {days} days at a time."), days=MAX_DAYS)


@dataclass(frozen=True)
class Preset:
    label: str
    start: date
    end: date


def presets(today: date) -> list[Preset]:
    """This month (to today), last month, the last 7 days (today included)."""
    month_start = today.replace(day=1)
    last_month_end = month_start - timedelta(days=1)
    return [
        Preset(_("This month"), month_start, today),
        Preset(_("Last month"), last_month_end.replace(day=1), last_month_end),
        Preset(_("Last 7 days"), today - timedelta(days=6), today),
    ]


def default_range(today: date) -> tuple[date, date]:
    """This month up to now."""
    return today.replace(day=1), today


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs=None) -> None:
        super().__init__(attrs, format="%Y-%m-%d")


class UsageRangeForm(PortalForm):
    """A range of UTC days. Missing ends take the default (this month up to today)."""

    start = forms.DateField(label=_("From"), widget=DateInput, input_formats=["%Y-%m-%d"])
    end = forms.DateField(label=_("To (included)"), widget=DateInput, input_formats=["%Y-%m-%d"])

    def __init__(self, query, *, today: date, **kwargs) -> None:
        data = query.copy()
        first, last = default_range(today)
        if not data.get("start"):
            data["start"] = first.isoformat()
        if not data.get("end"):
            data["end"] = last.isoformat()
        super().__init__(data, **kwargs)
        for field in self.fields.values():
            field.error_messages["invalid"] = _("Enter a date as YYYY-MM-DD.")

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end:
            if end >= date.max - timedelta(days=1) or start.year < 1900:
                self.add_error("end", _("Pick dates between 1900 and 9998."))
            elif end < start:
                self.add_error("end", REVERSED)
            elif (end - start).days + 1 > MAX_DAYS:
                self.add_error("end", TOO_LONG)
        return cleaned

    def instants(self) -> tuple[datetime, datetime]:
        """[start of the first day, start of the day after the last) in UTC."""
        data = self.cleaned_data
        return day_start(data["start"]), day_start(data["end"] + timedelta(days=1))


class UsageExportForm(UsageRangeForm):
    group_by = forms.ChoiceField(
        label=_("Group by"), choices=[(g, g) for g in GROUPS], required=False
    )

    def clean_group_by(self) -> str:
        return self.cleaned_data.get("group_by") or "day"
