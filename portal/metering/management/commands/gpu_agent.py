"""The GPU telemetry agent of one host (design and storage: ``portal.metering.telemetry``)."""

import time
from datetime import datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from portal.catalog.models import Host
from portal.errors import InvalidInput
from portal.metering import telemetry

MAX_PENDING = 10_000  # samples kept for the next try while the database is unreachable


def positive_number(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def non_negative_number(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = (
        "Read each GPU of this host through NVML every few seconds and record the samples as its "
        "telemetry; or, with --replay, send the samples of a recorded run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", required=True, help="The registered host this agent runs on.")
        parser.add_argument(
            "--interval",
            type=positive_number,
            default=5.0,
            help="Seconds between readings (default 5).",
        )
        parser.add_argument("--once", action="store_true", help="Read once and stop.")
        parser.add_argument(
            "--replay",
            type=Path,
            metavar="FILE",
            help="Send the samples of a recorded run (a CSV like "
            "portal/metering/data/h200-nvml-samples.csv) instead of "
            "reading NVML.",
        )
        parser.add_argument(
            "--gpu-uuid", help="With --replay: the host's GPU they are for (default: its first)."
        )
        parser.add_argument(
            "--speed",
            type=non_negative_number,
            default=1.0,
            help="With --replay: send N times faster than recorded; 0 sends all at once.",
        )
        parser.add_argument(
            "--start",
            help="With --replay: the time of the run's start (ISO 8601 with a zone; default now). "
            "Samples keep their recorded spacing from it.",
        )

    def handle(self, *args, **options) -> None:
        self.verbosity = options["verbosity"]
        host = Host.objects.filter(name=options["host"]).first()
        if host is None:
            raise CommandError(f"No host named '{options['host']}' is registered.")
        if options["replay"] is not None:
            self._replay(host, options)
        else:
            for name in ("gpu_uuid", "start"):
                if options[name]:
                    raise CommandError(f"--{name.replace('_', '-')} goes with --replay.")
            self._live(host, options)

    # --- a recorded run ---------------------------------------------------------------------

    def _replay(self, host: Host, options: dict) -> None:
        gpus = host.gpus.order_by("index")
        gpu = gpus.filter(uuid=options["gpu_uuid"]).first() if options["gpu_uuid"] else gpus.first()
        if gpu is None:
            raise CommandError(
                f"{host.name} has no GPU {options['gpu_uuid']}."
                if options["gpu_uuid"]
                else f"{host.name} has no GPUs."
            )
        start = self._start(options["start"])
        try:
            recording = telemetry.load_recording(options["replay"])
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        samples = telemetry.replay_samples(recording, gpu_uuid=gpu.uuid, start=start)
        created = 0
        try:
            if options["speed"] == 0:
                created = telemetry.telemetry_record(samples=samples, host=host).created
            else:
                previous = recording[0].offset
                for line, sample in zip(recording, samples, strict=True):
                    time.sleep((line.offset - previous) / options["speed"])
                    previous = line.offset
                    created += telemetry.telemetry_record(samples=[sample], host=host).created
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        except KeyboardInterrupt:
            self.stderr.write(f"Stopped after {created} new samples.")
            return
        energy = telemetry.energy_text(telemetry.counter_increase(s.energy_mj for s in samples))
        self.stdout.write(
            f"Replayed {len(samples)} samples onto GPU {gpu.index} ({gpu.uuid}) of {host.name} "
            f"from {start:%Y-%m-%d %H:%M:%S} UTC: {created} new, {len(samples) - created} "
            f"already recorded; the energy counter rose by {energy}."
        )

    def _start(self, text: str | None) -> datetime:
        if not text:
            return timezone.now()
        moment = parse_datetime(text)
        if moment is None or timezone.is_naive(moment):
            raise CommandError(
                f"--start '{text}' is not an ISO date-time with a time zone "
                "(e.g. 2026-11-26T10:00:00Z)."
            )
        return moment

    # --- live readings ----------------------------------------------------------------------

    def _live(self, host: Host, options: dict) -> None:
        try:
            nvml = telemetry.Nvml()
        except telemetry.TelemetryUnavailable as exc:
            raise CommandError(
                f"Cannot read the GPUs: {exc} (--replay FILE sends recorded samples instead.)"
            ) from None
        try:
            registered = set(host.gpus.values_list("uuid", flat=True))
            uuids = [uuid for uuid in nvml.handles if uuid in registered]
            for uuid in nvml.handles:
                if uuid not in registered:
                    self.stderr.write(f"GPU {uuid} is not registered for {host.name}; skipped.")
            if not uuids:
                raise CommandError(
                    f"None of the {len(nvml.handles)} GPUs NVML sees here is registered for "
                    f"{host.name}; is --host right?"
                )
            self.stdout.write(
                f"Reading {len(uuids)} GPU{'s' if len(uuids) != 1 else ''} of {host.name}"
                + ("" if options["once"] else f" every {options['interval']:g} s (Ctrl-C stops)")
            )
            self._loop(nvml, host, uuids, interval=options["interval"], once=options["once"])
        except KeyboardInterrupt:
            pass
        finally:
            nvml.close()

    def _loop(self, nvml, host: Host, uuids: list[str], *, interval: float, once: bool) -> None:
        pending: list[telemetry.Sample] = []
        due = time.monotonic()
        while True:
            pending.extend(nvml.read(uuids, timezone.now()))
            try:
                result = telemetry.telemetry_record(samples=pending, host=host)
            except DatabaseError as exc:
                close_old_connections()  # a broken connection is opened again next time
                pending = pending[-MAX_PENDING:]
                self.stderr.write(f"Could not record {len(pending)} samples ({exc}); will retry.")
                if once:
                    raise CommandError("The samples were not recorded.") from None
            except InvalidInput as exc:  # a reading out of range, or the host's clock is off
                self.stderr.write(f"Dropped {len(pending)} samples: {exc.message}")
                pending = []
                if once:
                    raise CommandError(exc.message) from None
            else:
                pending = []
                if once or self.verbosity >= 2:
                    self.stdout.write(
                        f"Recorded {result.created} samples"
                        + (f" ({result.duplicates} already there)" if result.duplicates else "")
                    )
            if once:
                return
            due += interval
            delay = due - time.monotonic()
            if delay < 0:  # fell behind (a slow database): read now and keep the pace from here
                due, delay = time.monotonic(), 0
            time.sleep(delay)
