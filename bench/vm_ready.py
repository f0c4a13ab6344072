"""Launch to SSH-ready with real guests: how long from the libvirt backend's ``create`` until the
customer's key logs in, for the tiny guest (busybox and dropbear) and the debian12 guest (real
cloud-init), under a private libvirtd with QEMU in software (TCG).

Run as root: .venv/bin/python bench/vm_ready.py [--rounds 3] [--guest tiny|debian12|both]
(builds the guests on first use, about 10 s and 2 min; see tests/provisioning/guests/).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
os.environ.setdefault("DEBUG", "1")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from portal.provisioning.base import MachineSpec  # noqa: E402
from portal.provisioning.base import ObservedState as S  # noqa: E402
from portal.provisioning.libvirt import LibvirtBackend  # noqa: E402
from tests.provisioning.real_vm import (  # noqa: E402
    PrivateLibvirtd,
    backend_options,
    build_debian_guest,
    build_tiny_guest,
    new_key,
    ssh,
)

VCPUS = {"tiny": 1, "debian12": 2}


def one_boot(backend, daemon, guest: str, n: int, key: Path, public: str) -> float:
    spec = MachineSpec(
        machine_id=f"bench-{guest}-{n}",
        name=f"bench-{n}",
        host_name="local",
        vcpus=VCPUS[guest],
        ram_gib=1,
        disk_gb=4,
        image=guest,
        ssh_public_keys=(public,),
    )
    started = time.monotonic()
    backend.create(spec)
    deadline = started + 300
    while True:
        status = backend.describe(spec.machine_id)
        if status.state == S.RUNNING:
            target = status.detail["ssh"]
            if ssh(key, target["host"], target["port"], target["user"], "true").returncode == 0:
                break
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{spec.machine_id} not ready: {daemon.console(spec.machine_id)[-2000:]}"
            )
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    backend.terminate(spec.machine_id)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guest", choices=["tiny", "debian12", "both"], default="both")
    args = parser.parse_args()
    guests = ["tiny", "debian12"] if args.guest == "both" else [args.guest]

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0)
    daemon = PrivateLibvirtd().start()
    try:
        built = {}
        for guest in guests:
            built[guest] = build_tiny_guest() if guest == "tiny" else build_debian_guest()
            daemon.add_base_image(guest, None if guest == "tiny" else built[guest] / "base.qcow2")
        backend = LibvirtBackend(
            **backend_options(
                daemon,
                {guest: (built[guest], guest) for guest in guests},
                shutdown_timeout_seconds=5,
            )
        )
        key, public = new_key(Path(tempfile.mkdtemp()), "bench")
        for guest in guests:
            times = [one_boot(backend, daemon, guest, n, key, public) for n in range(args.rounds)]
            print(
                f"{guest}: create to SSH login in {statistics.median(times):.1f} s median "
                f"(min {min(times):.1f}, max {max(times):.1f}, {len(times)} boots: "
                + ", ".join(f"{t:.1f}" for t in times)
                + ")"
            )
    finally:
        daemon.stop()
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
