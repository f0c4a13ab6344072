"""A real Slurm cluster for the tests: four nodes with eight fake H200 GPUs each.

``SlurmCluster`` runs munged, a private MariaDB for slurmdbd's accounting (or a database of its
own, dropped on stop, on the server ``TEST_SLURM_MYSQL=host:port`` names), slurmdbd, slurmctld,
one slurmd per node (Debian's Slurm 22.05 is built with multiple-slurmd) and slurmrestd, all as
children of the test process, with their configuration, state, logs and sockets in one
temporary directory, and every port on 127.0.0.1 in the block it is given (B+17 slurmctld, B+19
slurmdbd, B+21.. the slurmds, B+30 MariaDB).

The GPUs are character devices made with ``mknod`` (copies of /dev/null) that gres.conf names;
Slurm counts and hands them out like real ones, which is all the portal needs of them.

slurmrestd refuses to run as root, so it runs as the ``slurm`` user that Debian's packages
create, on a unix socket with ``rest_auth/local`` (the peer's uid is read from the socket; this
build has no ``auth/jwt`` for slurmctld). Jobs submitted through it run as ``slurm``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = (
    "munged", "slurmdbd", "slurmctld", "slurmd", "slurmrestd", "sinfo", "scancel", "mysql",
)  # fmt: skip
REST_VERSION = "v0.0.38"  # the OpenAPI plugin Slurm 22.05 ships (also v0.0.36 and v0.0.37)
GPUS_PER_NODE = 8
GPU_TYPE = "h200"
# slurmdbd's MariaDB: a private one started with the cluster (port B+30, data in its folder),
# unless TEST_SLURM_MYSQL=host:port names a running server (root, empty password) to use.
EXTERNAL_MYSQL = os.environ.get("TEST_SLURM_MYSQL", "")


def missing_parts() -> list[str]:
    """What this machine lacks to run the cluster (empty when it has everything)."""
    lacking = [tool for tool in DAEMONS if not shutil.which(tool)]
    if os.geteuid() != 0:
        lacking.append("root (slurmd runs jobs as their users, and mknod makes the fake GPUs)")
    try:
        import pwd

        pwd.getpwnam("slurm")
    except KeyError:
        lacking.append("the slurm user (Debian's slurm packages create it)")
    if EXTERNAL_MYSQL:
        host, _, port = EXTERNAL_MYSQL.rpartition(":")
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((host, int(port))) != 0:
                lacking.append(f"MariaDB on {EXTERNAL_MYSQL} (TEST_SLURM_MYSQL)")
    else:
        lacking += [tool for tool in ("mariadbd", "mariadb-install-db") if not shutil.which(tool)]
    return lacking


def port_block() -> int:
    """This test process's ports: 16800 + 100*N for xdist worker gwN, N=9 outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    number = int(worker.removeprefix("gw")) if worker else 9
    return 16800 + 100 * number


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent ids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class SlurmCluster:
    def __init__(self, block: int, node_count: int = 4) -> None:
        self.block = block
        self.node_count = node_count
        self.nodes = [f"gpu{n}" for n in range(1, node_count + 1)]
        self.cluster_name = f"portal{(block - 16800) // 100}"
        self.database = f"slurm_acct_{self.cluster_name}"
        self.root = Path(tempfile.mkdtemp(prefix="pslurm-", dir="/tmp"))
        self.root.chmod(0o755)  # slurmrestd (user slurm) reads slurm.conf and its socket here
        self.processes: dict[str, subprocess.Popen] = {}
        self.started_in: float | None = None
        if EXTERNAL_MYSQL:
            host, _, port = EXTERNAL_MYSQL.rpartition(":")
            self.mysql_host, self.mysql_port, self.private_mysql = host, int(port), False
        else:
            self.mysql_host, self.mysql_port, self.private_mysql = "127.0.0.1", block + 30, True

    # --- where things are -----------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def rest_socket(self) -> Path:
        return self.root / "rest" / "sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, timeout: float = 5) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (they block ~10 s on a dead daemon)."""
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def rest(self, method: str, path: str, body: dict | None = None) -> dict:
        """Ask slurmrestd directly (the harness's own client, independent of the portal's)."""
        connection = _UnixHTTPConnection(str(self.rest_socket))
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            connection.request(method, f"/slurm/{REST_VERSION}/{path}", payload, headers)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def wait_for_job(self, job_id: int, state: str, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.rest("GET", f"job/{job_id}").get("jobs") or [{}]
            if jobs[0].get("job_state") == state:
                return jobs[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {jobs[0].get('job_state')}, not {state}")
            time.sleep(0.1)

    def wait_until(self, condition, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the cluster did not get there in time")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # --- configuration --------------------------------------------------------------------
    def _write_config(self) -> None:
        d, b, host = self.root, self.block, socket.gethostname()
        for sub in ("etc", "munge", "state", "log", "run", "dev", "rest"):
            (d / sub).mkdir(exist_ok=True)
        for node in self.nodes:
            (d / "spool" / node).mkdir(parents=True)
        (d / "munge").chmod(0o755)
        key = d / "munge" / "key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        for i in range(GPUS_PER_NODE):
            os.mknod(d / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(1, 3))
        shutil.chown(d / "rest", "slurm", "slurm")
        munge = d / "munge" / "sock"
        node_lines = "\n".join(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={b + 21 + i}"
            for i, node in enumerate(self.nodes)
        )
        self.conf.write_text(f"""ClusterName={self.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={b + 17}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmctldLogFile={d}/log/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=4000
EnforcePartLimits=ALL
GresTypes=gpu
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={b + 19}
AccountingStoragePass={munge}
AccountingStorageTRES=gres/gpu,gres/gpu:{GPU_TYPE}
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc={d}/log/jobcomp.txt
NodeName=DEFAULT CPUs=32 Boards=1 SocketsPerBoard=2 CoresPerSocket=16 ThreadsPerCore=1 RealMemory=256000 Gres=gpu:{GPU_TYPE}:{GPUS_PER_NODE} State=UNKNOWN
{node_lines}
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        (d / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={','.join(self.nodes)} Name=gpu Type={GPU_TYPE} "
            f"File={d}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n"
        )
        (d / "etc" / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
        dbd = d / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={munge}
SlurmUser=root
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort={b + 19}
PidFile={d}/run/slurmdbd.pid
LogFile={d}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost={self.mysql_host}
StoragePort={self.mysql_port}
StorageUser=root
StorageLoc={self.database}
""")
        dbd.chmod(0o600)

    def _mysql(self, statement: str) -> None:
        subprocess.run(
            [
                "mysql",
                "-h",
                self.mysql_host,
                "-P",
                str(self.mysql_port),
                "-u",
                "root",
                "-e",
                statement,
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )

    # --- start and stop -------------------------------------------------------------------
    def _spawn(self, name: str, *command: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - kept for the process
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait(self, what: str, ready, deadline: float) -> None:
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({process.returncode}) while waiting for {what}:\n"
                        + (self.root / "log" / f"{name}.out").read_text(errors="replace")[-3000:]
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def _nodes_idle(self) -> bool:
        """Every node idle and responding (``%t`` marks a node that is not with ``*``)."""
        try:
            result = self.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=2)
        except subprocess.TimeoutExpired:
            return False
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return sorted(states) == sorted(self.nodes) and set(states.values()) == {"idle"}

    def start(self, timeout: float = 60) -> SlurmCluster:
        began = time.monotonic()
        deadline = began + timeout
        d = self.root
        if self.private_mysql:  # its data directory takes ~3.5 s: made while the rest starts
            (d / "log").mkdir()
            (d / "mysql-tmp").mkdir()  # its own temporary tables, never another server's /tmp
            installing = subprocess.Popen(
                ["mariadb-install-db", "--no-defaults", f"--datadir={d}/mysql", "--user=root",
                 f"--tmpdir={d}/mysql-tmp",
                 "--auth-root-authentication-method=normal", "--skip-test-db",
                 "--skip-name-resolve"],
                stdout=open(d / "log" / "mariadb-install.out", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._write_config()
        self._spawn(
            "munged",
            "munged", "-F", f"--socket={d}/munge/sock", f"--key-file={d}/munge/key",
            f"--pid-file={d}/munge/pid", f"--log-file={d}/munge/log", f"--seed-file={d}/munge/seed",
        )  # fmt: skip
        self._wait("munged", lambda: (d / "munge" / "sock").exists(), deadline)
        if self.private_mysql:
            if installing.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
                raise RuntimeError(
                    "mariadb-install-db failed:\n"
                    + (d / "log" / "mariadb-install.out").read_text(errors="replace")[-3000:]
                )
            self._spawn(
                "mariadbd",
                "mariadbd", "--no-defaults", f"--datadir={d}/mysql", "--user=root",
                f"--tmpdir={d}/mysql-tmp", f"--socket={d}/mysql/sock", f"--port={self.mysql_port}", "--bind-address=127.0.0.1",
                "--skip-name-resolve", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                f"--pid-file={d}/mysql/pid",
            )  # fmt: skip

            def mysql_answers() -> bool:
                try:
                    self._mysql("SELECT 1")
                except subprocess.SubprocessError:
                    return False
                return True

            self._wait("MariaDB", mysql_answers, deadline)
        self._mysql(f"DROP DATABASE IF EXISTS {self.database}; CREATE DATABASE {self.database}")
        self._spawn("slurmdbd", "slurmdbd", "-D")

        def dbd_answers() -> bool:
            try:
                return self.run("sacctmgr", "-n", "list", "cluster", timeout=2).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        self._wait("slurmdbd", dbd_answers, deadline)
        self._spawn("slurmctld", "slurmctld", "-D", "-i")
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", "slurmd", "-D", "-N", node)
        self._wait("every node idle", self._nodes_idle, deadline)
        self._spawn(
            "slurmrestd",
            "slurmrestd", "-u", "slurm", "-a", "rest_auth/local",
            "-s", f"openapi/{REST_VERSION},openapi/db{REST_VERSION}", f"unix:{self.rest_socket}",
        )  # fmt: skip
        self._wait("slurmrestd", self.rest_socket.exists, deadline)
        self.started_in = time.monotonic() - began
        return self

    def cancel_all(self, timeout: float = 20) -> None:
        """Cancel every job and wait until none is pending, running or completing."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            jobs = self.run("squeue", "-h", "-o", "%i", timeout=3).stdout.split()
            if jobs:
                self.run("scancel", "--full", "--quiet", *jobs, timeout=3)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = self.run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", timeout=3)
                if left.returncode == 0 and not left.stdout.strip():
                    return
                time.sleep(0.1)

    def resume_all(self, timeout: float = 20) -> None:
        """Put drained or downed nodes back in service and wait until every node is idle."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            if self._nodes_idle():
                return
            for node in self.nodes:
                self.run("scontrol", "update", f"nodename={node}", "state=resume", timeout=3)
            # a resumed node reads "not responding" until slurmctld next pings it (minutes);
            # reconfiguring makes every slurmd register again at once
            self.run("scontrol", "reconfigure", timeout=5)
            deadline = time.monotonic() + timeout
            while not self._nodes_idle() and time.monotonic() < deadline:
                time.sleep(0.1)

    def _terminate(self, names: list[str], grace: float = 5) -> None:
        for name in names:
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name in names:
            process = self.processes.get(name)
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def _kill_stray_steps(self) -> None:
        """slurmstepd and its job outlive slurmd: kill those of this cluster (by SLURM_CONF)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = subprocess.run(["pgrep", "-x", "slurmstepd"], capture_output=True, text=True)
        for pid in found.stdout.split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in environ:
                for victim in [int(pid), *_descendants(int(pid))]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)

    def stop(self) -> None:
        try:
            if "slurmctld" in self.processes:
                self.cancel_all()
            self._terminate(["slurmrestd"])
            self._terminate(["slurmctld", *(f"slurmd-{node}" for node in self.nodes)])
            self._terminate(["slurmdbd"])
            self._terminate(["munged"])
            self._kill_stray_steps()
        finally:
            if self.private_mysql:
                self._terminate(["mariadbd"], grace=10)
            else:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._mysql(f"DROP DATABASE IF EXISTS {self.database}")
            shutil.rmtree(self.root, ignore_errors=True)
