from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from portal.accounts.types import Actor
from portal.catalog import services
from portal.catalog.models import Host, MigProfile, Region
from portal.catalog.reports import MAX_REPORT_BYTES, parse_mig_tables
from portal.errors import PortalError

HOST_NAME_MAX = Host._meta.get_field("name").max_length


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_REPORT_BYTES:
            raise CommandError(
                f"The {what} {path} is {size} bytes; at most {MAX_REPORT_BYTES} are accepted."
            )
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from None


def _placements(profile: MigProfile) -> str:
    return "{" + ",".join(str(s) for s in profile.placements) + "}:" + str(profile.memory_slots)


class Command(BaseCommand):
    help = (
        "Register a GPU host from its `nvidia-smi -q -x` report and, for MIG-capable GPUs, its "
        "`nvidia-smi mig -lgip` / `-lgipp` tables. Nothing is written unless everything is valid."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Host name (a slug), e.g. h200-node-01.")
        parser.add_argument("--region", required=True, help="Region code, e.g. us-east-1.")
        parser.add_argument(
            "--report", required=True, type=Path, help="The `nvidia-smi -q -x` output (XML)."
        )
        parser.add_argument("--vcpus", required=True, type=int, help="vCPUs the host sells.")
        parser.add_argument("--ram-gib", required=True, type=int, help="RAM (GiB) the host sells.")
        parser.add_argument("--disk-gb", type=int, default=0, help="Local disk (GB); default 0.")
        parser.add_argument(
            "--mig-tables",
            type=Path,
            help="Text with `nvidia-smi mig -lgip` and `nvidia-smi mig -lgipp` output.",
        )

    def handle(self, *args, **options):
        name = options["name"].strip()
        try:
            validate_slug(name)
        except ValidationError:
            raise CommandError(
                f"Host name '{name}' may contain only letters, digits, hyphens and underscores."
            ) from None
        if len(name) > HOST_NAME_MAX:
            raise CommandError(f"Host name '{name}' is longer than {HOST_NAME_MAX} characters.")
        if options["disk_gb"] < 0:
            raise CommandError("--disk-gb cannot be negative.")
        region = Region.objects.filter(code=options["region"]).first()
        if region is None:
            known = list(Region.objects.order_by("code").values_list("code", flat=True))
            raise CommandError(
                f"Unknown region '{options['region']}'. "
                + (f"Known regions: {', '.join(known)}." if known else "No regions exist yet.")
            )
        report = _read(options["report"], "report")
        mig_tables = None
        if options["mig_tables"] is not None:
            try:
                mig_tables = _read(options["mig_tables"], "MIG tables file").decode("utf-8")
            except UnicodeDecodeError:
                raise CommandError(
                    f"The MIG tables file {options['mig_tables']} is not UTF-8 text."
                ) from None
        try:
            host = services.host_register(
                name=name,
                region=region,
                report=report,
                vcpus=options["vcpus"],
                ram_gib=options["ram_gib"],
                disk_gb=options["disk_gb"],
                mig_tables=mig_tables,
                actor=Actor.system(),
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        # The service has parsed the tables already; parse again only to name what it imported.
        imported = {p.name for p in parse_mig_tables(mig_tables)} if mig_tables else set()
        self._summary(host, mig_tables_given=mig_tables is not None, imported=imported)

    def _summary(self, host: Host, *, mig_tables_given: bool, imported: set[str]) -> None:
        write = self.stdout.write
        gpus = list(host.gpus.select_related("gpu_model").order_by("index"))
        write(
            f"Registered host {host.name} in {host.region.code}: {len(gpus)} GPU(s), "
            f"{host.vcpus} vCPUs, {host.ram_gib} GiB RAM, {host.disk_gb} GB disk, "
            f"driver {host.driver_version or '?'}, CUDA {host.cuda_version or '?'}."
        )
        write("GPUs:")
        write(f"  {'index':>5}  {'model':<22} {'UUID':<41} {'PCI bus id':<17} {'memory':>11}  MIG")
        for gpu in gpus:
            write(
                f"  {gpu.index:>5}  {gpu.gpu_model!s:<22} {gpu.uuid:<41} {gpu.pci_bus_id:<17} "
                f"{gpu.memory_mib:>7} MiB  {'enabled' if gpu.mig_enabled else 'disabled'}"
            )
        mig_models = sorted({g.gpu_model for g in gpus if g.gpu_model.mig_capable}, key=str)
        if not mig_tables_given:
            write("MIG profiles: none imported (no --mig-tables given).")
            return
        if not mig_models:
            write("MIG profiles: none imported (no MIG-capable GPU on this host).")
            return
        for model in mig_models:
            profiles = [p for p in model.mig_profiles.all() if p.name in imported]
            write(f"MIG profiles of {model} imported ({len(profiles)}):")
            for profile in profiles:
                write(
                    f"  {profile.name:<12} ID {profile.profile_id:>2}  "
                    f"{profile.memory_gib:>7} GiB  placements {_placements(profile):<17} "
                    f"max {profile.max_instances}"
                )
