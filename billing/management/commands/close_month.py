"""Close a month and issue its invoices (what the ``billing.month_close`` task does on the 1st)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.invoicing import services as invoicing
from portal.errors import PortalError


class Command(BaseCommand):
    help = (
        "Close the metering hours of a month, debit its usage and issue one invoice per "
        "organisation with usage (safe to run again: finalized invoices are left as they are)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--month", help="YYYY-MM, e.g. 2026-10 (default: the previous month, UTC)."
        )

    def handle(self, *args, month: str | None = None, **options) -> None:
        try:
            report = invoicing.month_close(month)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(report.summary())
        for number in report.finalized:
            self.stdout.write(f"  {number}")
        if report.failed:
            raise CommandError(f"{len(report.failed)} organisation(s) failed; run it again.")
