from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portal.accounts.types import Actor
from portal.catalog.importers import ImportResult, catalog_import
from portal.errors import PortalError

EXAMPLES = 3


class Command(BaseCommand):
    help = (
        "Import instance types and USD prices from a SkyPilot catalog CSV (vms.csv). Rows that "
        "cannot be mapped are listed by reason. Running it again changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The catalog CSV, e.g. lambda.csv.")
        parser.add_argument(
            "--provider", required=True, help="Name of the cloud it lists, e.g. lambda."
        )
        parser.add_argument(
            "--verbose", action="store_true", help="List every row that was not imported."
        )

    def handle(self, *args, **options):
        try:
            result = catalog_import(
                path=options["file"], provider=options["provider"], actor=Actor.system()
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self._summary(result, options["file"], verbose=options["verbose"])

    def _summary(self, result: ImportResult, path: Path, *, verbose: bool) -> None:
        write = self.stdout.write
        write(
            f"Imported {path.name} as provider {result.provider}: {result.rows} rows, "
            f"{result.rows_imported} imported, {len(result.unmapped)} not imported."
        )
        write(
            f"  instance types: {result.types_created} created, {result.types_updated} updated, "
            f"{result.types_unchanged} unchanged"
        )
        write(f"  regions: {result.regions_created} created")
        write(
            f"  prices (USD): {result.prices_created} created, {result.prices_unchanged} unchanged"
        )
        if not result.unmapped:
            return
        write(f"Not imported ({len(result.unmapped)} rows), by reason:")
        for reason, count in result.unmapped_by_reason().items():
            examples = "; ".join(
                f"line {row.line} {row.instance_type or '(none)'} in {row.region or '(none)'}"
                for row in result.unmapped_examples(reason, EXAMPLES)
            )
            more = ", ..." if count > EXAMPLES else ""
            write(f"  {count:5d}  {reason}  (e.g. {examples}{more})")
        if verbose:
            write("Every row not imported:")
            for row in result.unmapped:
                write(
                    f"  line {row.line}: {row.instance_type or '(none)'} in "
                    f"{row.region or '(none)'}: {row.reason}"
                )
