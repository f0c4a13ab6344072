"""Real virtual machines for the tests: a private libvirtd and the guests it boots under QEMU.

``PrivateLibvirtd`` runs libvirtd as root in a mount namespace of its own, with its
configuration, state and sockets in a temporary directory bind-mounted over the system paths,
so it needs no system service and touches nothing outside that directory. KVM is not usable on
these machines, so guests run in software (TCG, CPU model ``qemu64``).

The "tiny" guest (tests/provisioning/guests/build-tiny.sh) is Debian's cloud kernel with a
busybox and dropbear initramfs that reads the NoCloud seed and boots to SSH in seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

GUESTS = Path(__file__).resolve().parent / "guests"

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
stdio_handler = "file"
cgroup_controllers = [ ]
"""
LIBVIRTD_CONF = """unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
"""
# What libvirtd keeps under the system paths, and where each is bound from.
BINDS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "run": "/run/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


def missing_parts() -> list[str]:
    """What this machine lacks to run real VMs (empty when it has everything)."""
    lacking = []
    if os.geteuid() != 0:
        lacking.append("root (libvirtd runs in a mount namespace of its own)")
    for tool in ("libvirtd", "qemu-system-x86_64", "qemu-img", "unshare", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            lacking.append(tool)
    for tool in ("/bin/busybox", "/usr/sbin/dropbear", "/usr/bin/dropbearkey"):
        if not os.path.exists(tool):
            lacking.append(tool)
    return lacking


def build_tiny_guest() -> Path:
    """The directory with the tiny guest's ``vmlinuz`` and ``initrd.img`` (built once, cached)."""
    result = subprocess.run(
        [str(GUESTS / "build-tiny.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny guest failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def ensure_qemu_user() -> None:
    """libvirtd's QEMU driver resolves its compiled-in default user and group (both
    ``libvirt-qemu`` on Debian) before it reads qemu.conf, and fails when they do not exist; the package
    that would create them (libvirt-daemon-system) would also upgrade systemd, so create them
    as system accounts (no login, no home) if they are missing."""
    import grp
    import pwd

    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        subprocess.run(["groupadd", "--system", "libvirt-qemu"], check=True)
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--gid", "libvirt-qemu", "--no-create-home",
             "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", "libvirt-qemu"],
            check=True,
        )  # fmt: skip


def build_debian_guest(timeout: float = 900) -> Path:
    """The directory with the debian12 guest's ``base.qcow2``, ``vmlinuz`` and ``initrd.img``.
    scripts/test.sh starts its build in the background before the suite
    (``PORTAL_DEBIAN_GUEST_BUILD`` names where it writes ``path``, ``log`` and ``rc``), so the
    two minutes it takes on a new machine pass beside the other tests; without it, build now."""
    build = os.environ.get("PORTAL_DEBIAN_GUEST_BUILD")
    if not build:
        result = subprocess.run(
            [str(GUESTS / "build-debian.sh")], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the debian12 guest failed:\n{result.stderr[-3000:]}")
        return Path(result.stdout.strip().splitlines()[-1])
    rc = Path(build) / "rc"
    deadline = time.monotonic() + timeout
    while not rc.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the debian12 guest was not built within {timeout}s")
        time.sleep(1)
    if rc.read_text().strip() != "0":
        log = (Path(build) / "log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"building the debian12 guest failed:\n{log}")
    return Path((Path(build) / "path").read_text().strip().splitlines()[-1])


class PrivateLibvirtd:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="portal-libvirtd-"))
        self.images = self.root / "images"
        self.consoles = self.root / "consoles"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"

    def start(self, timeout: float = 60) -> PrivateLibvirtd:
        ensure_qemu_user()
        for name in BINDS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.images.mkdir()
        self.consoles.mkdir()
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        for target in BINDS.values():
            Path(target).mkdir(parents=True, exist_ok=True)  # empty mount points
        mounts = " && ".join(
            f"mount --bind {self.root / name} {target}" for name, target in BINDS.items()
        )
        log = open(self.root / "libvirtd.log", "wb")  # noqa: SIM115 - kept for the process
        self.process = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                f"{mounts} && exec libvirtd",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = libvirt.open(self.uri)
                break
            except libvirt.libvirtError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"libvirtd did not start: {(self.root / 'libvirtd.log').read_text()}"
                    ) from None
                time.sleep(0.2)
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>images</name><target><path>{self.images}</path></target></pool>",
            0,
        )
        pool.create(0)
        conn.close()
        return self

    def add_base_image(self, name: str, source: Path | None = None) -> None:
        """A base image in the pool: a copy-on-write layer over ``source`` (a qcow2), or an
        empty one (the tiny guest boots its kernel directly and leaves its disk alone, but every
        machine gets an overlay of its image as its boot disk)."""
        target = str(self.images / f"{name}.qcow2")
        command = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if source is None:
            command += [target, "64M"]
        else:
            command += ["-b", str(source), "-F", "qcow2", target]
        subprocess.run(command, check=True)
        import libvirt

        conn = libvirt.open(self.uri)
        conn.storagePoolLookupByName("images").refresh(0)
        conn.close()

    def console(self, machine_id: str) -> str:
        path = self.consoles / f"{machine_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for pid_file in (self.root / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


# How each test guest boots and whom it lets in.
GUEST_BOOT = {
    "tiny": ("console=ttyS0 panic=-1", "root"),
    "debian12": ("root=/dev/vda rw console=ttyS0", "debian"),
}


def backend_options(daemon: PrivateLibvirtd, guests: dict[str, tuple[Path, str]], **extra) -> dict:
    """The libvirt backend's options for machines under ``daemon``: QEMU in software, each
    image of ``guests`` (``{image name: (built guest directory, GUEST_BOOT key)}``) booted from
    its kernel, SSH forwarded to a port of this xdist worker's block, consoles logged."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or "0"
    first = 23000 + 100 * int(worker)
    options = {
        "uri_template": daemon.uri,
        "image_dir": str(daemon.images),
        "network": "",
        "domain_type": "qemu",
        "cpu_model": "qemu64",
        "direct_boot": {
            image: {
                "kernel": str(built / "vmlinuz"),
                "initrd": str(built / "initrd.img"),
                "cmdline": GUEST_BOOT[guest][0],
            }
            for image, (built, guest) in guests.items()
        },
        "ssh_users": {image: GUEST_BOOT[guest][1] for image, (_built, guest) in guests.items()},
        "ssh_forward": {"address": "127.0.0.1", "first_port": first, "last_port": first + 99},
        "console_dir": str(daemon.consoles),
    }
    return {**options, **extra}


def new_key(directory: Path, name: str) -> tuple[Path, str]:
    """An ed25519 key pair made by ssh-keygen: (private key path, public key line)."""
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
        check=True,
    )
    return path, path.with_suffix(".pub").read_text().strip()


def ssh(key: Path, host: str, port: int, user: str, command: str) -> subprocess.CompletedProcess:
    """Run ``command`` on the guest with this key only (no agent, no known hosts kept)."""
    return subprocess.run(
        [
            "ssh",
            "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            f"{user}@{host}", command,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
