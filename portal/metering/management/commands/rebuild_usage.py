from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from portal.metering import services


def _moment(text: str) -> datetime:
    value = parse_datetime(text) or (
        parse_datetime(f"{text}T00:00:00+00:00") if len(text) == 10 else None
    )
    if value is None or value.tzinfo is None:
        raise CommandError(
            f"'{text}' is not an ISO date-time with a time zone (e.g. 2026-11-01T00:00:00Z)."
        )
    return value


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
