"""``manage.py rebuild_usage`` takes the README's dates as well as date-times."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from portal.metering.management.commands.rebuild_usage import _moment


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-10-01", datetime(2026, 10, 1, tzinfo=UTC)),
        ("2026-10-01T00:00:00Z", datetime(2026, 10, 1, tzinfo=UTC)),
        ("2026-10-01T08:00:00+08:00", datetime(2026, 10, 1, tzinfo=UTC)),
        ("2026-10-01T05:30:00", datetime(2026, 10, 1, 5, 30, tzinfo=UTC)),
    ],
)
def test_dates_and_date_times_are_read_in_utc(text, moment):
    assert _moment(text) == moment
    assert _moment(text).utcoffset() in (timedelta(0), timedelta(hours=8))


@pytest.mark.parametrize("text", ["2026-13-01", "yesterday", "2026-10-01T25:00:00Z", ""])
def test_anything_else_is_refused_with_what_to_type(text):
    with pytest.raises(CommandError, match="not an ISO date or date-time"):
        _moment(text)


@pytest.mark.django_db
def test_the_readme_form_runs(capsys):
    call_command("rebuild_usage", "--start", "2026-10-01", "--end", "2026-11-01")
