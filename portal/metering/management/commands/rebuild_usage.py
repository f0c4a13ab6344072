from datetime import UTC, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime

from portal.metering import services


def _moment(text: str) -> datetime:
    """``2026-10-01`` (midnight UTC), ``2026-10-01T12:00:00Z`` or with an offset; a date-time
    without a zone is taken as UTC, as the help says."""
    text = text.strip()
    try:
        day = parse_date(text) if len(text) == 10 else None
        value = datetime.combine(day, time(), UTC) if day else parse_datetime(text)
    except ValueError:
        value = None
    if value is None:
        raise CommandError(
            f"'{text}' is not an ISO date or date-time (e.g. 2026-11-01 or 2026-11-01T00:00:00Z)."
        )
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Recompute the hourly usage records of a time range from the instance and volume history."
    )

    def add_arguments(self, parser):
        parser.add_argument("--start", required=True, help="ISO date-time or date (UTC), inclusive")
        parser.add_argument("--end", required=True, help="ISO date-time or date (UTC), exclusive")

    def handle(self, *args, start, end, **options):
        start_at, end_at = _moment(start), _moment(end)
        if end_at <= start_at:
            raise CommandError("--end must be after --start.")
        result = services.usage_rebuild(start=start_at, end=end_at)
        self.stdout.write(
            f"Usage {start_at:%Y-%m-%d %H:%M} to {end_at:%Y-%m-%d %H:%M}: {result['created']} records added, "
            f"{result['fixed']} corrected, {result['removed']} removed, {result['kept']} already right."
        )
