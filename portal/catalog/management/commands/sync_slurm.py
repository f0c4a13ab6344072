from django.core.management.base import BaseCommand, CommandError

from portal.catalog.slurm_sync import hosts_sync_slurm
from portal.errors import PortalError
from portal.provisioning.base import BackendError


class Command(BaseCommand):
    help = (
        "Mirror a Slurm cluster's nodes, GPU types and counts, state and GPUs in use into the "
        "hosts of its region (portal.catalog.slurm_sync). Safe to run as often as you like."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--backend", default="slurm", help="The PROVISIONING_BACKENDS alias (default slurm)."
        )

    def handle(self, *args, backend, **options):
        try:
            result = hosts_sync_slurm(alias=backend)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        except BackendError as exc:
            raise CommandError(f"Slurm did not answer: {exc}") from None
        self.stdout.write(
            f"created {len(result.created)}, changed {len(result.changed)}, "
            f"offline {len(result.offline)}, GPUs held by others {sum(result.foreign_gpus.values())}"
        )
        for node, why in sorted(result.skipped.items()):
            self.stdout.write(f"skipped {node}: {why}")
