"""Slurm as the engine behind the portal: GPUs held as Slurm allocations, through slurmrestd.

The engine's answer is the truth. Its nodes, GPU types and counts (GRES) are mirrored into the
portal's hosts (``portal.catalog.slurm_sync``), and each allocation's state and GPUs are read
back from Slurm; the portal never claims a GPU that Slurm did not give.

An instance on this backend is a Slurm allocation held for the customer, the way HPC centres
sell interactive nodes: a batch job named ``<job_prefix><machine id>``, pinned to the node the
portal placed it on (``nodelist``), asking for the instance's GPUs (``gpus_per_node``), CPUs and
memory, whose script only holds the allocation (``holder_script``, ``sleep infinity``). A job
taking every GPU of its node is ``exclusive``. ``requeue`` is off: a failed node ends the
allocation instead of starting it again elsewhere unseen.

Slurm cannot stop an allocation and start it again later with its GPUs' state, nor reboot it:
``stop``, ``start`` and ``reboot`` raise :class:`UnsupportedOperation` (``unsupported_actions``
lists them, so the portal refuses them before asking).

An allocation Slurm does not start within ``allocate_wait_seconds`` (other jobs hold what the
portal placed it on) is cancelled and ``create`` raises ``CapacityError``: the launch fails with
nothing billed, instead of waiting in Slurm's queue.

A cluster (``create_cluster``) is one job (``<job_prefix>cluster:<cluster id>``) of N nodes x
all their GPUs of one type: Slurm allocates every node at once or none (gang allocation). It is
only submitted when enough nodes are wholly free, and cancelled again if Slurm does not start it
within ``allocate_wait_seconds`` (another job took nodes first): either way
:class:`SlurmCapacityError` says how many nodes are free. Never a partial cluster.
``list_machines`` leaves clusters out (they are not instances).

State mapping: PENDING, CONFIGURING → ``provisioning``; RUNNING → ``running``; SUSPENDED →
``stopped``; COMPLETING and every ended state (COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL,
PREEMPTED, BOOT_FAIL, DEADLINE, OUT_OF_MEMORY) → ``terminated``. A job slurmctld has forgotten
(after ``MinJobAge``) is looked up in slurmdbd's accounting; unknown there too → ``missing``.
``detail`` has the Slurm job id, state and reason, and the GPUs of each node
(``{"gpu1": [0, 1, ...]}``, from the job's ``gres_detail``).

Options (``PROVISIONING_BACKENDS["slurm"]["OPTIONS"]``):

- ``socket``: the path of slurmrestd's unix socket (``slurmrestd -a rest_auth/local unix:...``;
  jobs then run as the user slurmrestd runs as); or ``url``: ``http://host:6820`` with JWT
  authentication (``user`` and ``token``, sent as ``X-SLURM-USER-NAME`` and
  ``X-SLURM-USER-TOKEN``). Exactly one of the two.
- ``api_version``: the OpenAPI plugin, ``v0.0.38`` (Slurm 22.05).
- ``region``: the code of the portal region the cluster's nodes become hosts of.
- ``gpu_types``: ``{"h200": "h200-sxm-141gb"}``: Slurm GRES type → portal GPU model code. A
  node's GPUs of a type not listed are not sold.
- ``partition`` (``gpu``), ``host_prefix`` (``""``: a node ``gpu1`` is host ``<prefix>gpu1``),
  ``job_prefix`` (``portal-``), ``time_limit_minutes`` (none: the partition's limit),
  ``working_directory`` (``/``), ``holder_script``, ``allocate_wait_seconds`` (5),
  ``timeout_seconds`` (10, per request).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from portal.provisioning.base import (
    CapacityError,
    MachineSpec,
    MachineStatus,
    ObservedState,
    PermanentBackendError,
    ProvisioningBackend,
    TransientBackendError,
)

HOLDER_SCRIPT = "#!/bin/sh\n# holds this allocation for its customer until it is terminated\nexec sleep infinity\n"
LIVE_JOB_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"}
JOB_STATES = {
    "PENDING": ObservedState.PROVISIONING,
    "CONFIGURING": ObservedState.PROVISIONING,
    "REQUEUED": ObservedState.PROVISIONING,
    "RUNNING": ObservedState.RUNNING,
    "RESIZING": ObservedState.RUNNING,
    "SUSPENDED": ObservedState.STOPPED,
}
# Between the job name prefix and a cluster's id (never in a machine id such as inst-42).
CLUSTER_MARK = "cluster:"
GRES = re.compile(r"^gpu:(?P<type>[^:()]+):(?P<count>\d+)")
GRES_INDEXES = re.compile(r"\(IDX:(?P<idx>[^)]*)\)")


class UnsupportedOperation(PermanentBackendError):
    """Slurm cannot do this to an allocation (stop it keeping its GPUs' state, reboot it)."""


class SlurmCapacityError(CapacityError):
    """Not enough of the cluster is free; ``free_nodes`` says how many nodes wholly are."""

    def __init__(self, message: str, *, requested_nodes: int, free_nodes: int) -> None:
        super().__init__(message)
        self.requested_nodes = requested_nodes
        self.free_nodes = free_nodes


# --- what the backend reports --------------------------------------------------------------
@dataclass(frozen=True)
class SlurmNode:
    """One node as slurmctld reports it."""

    name: str
    state: str  # idle, mixed, allocated, down, ... (lower case, as slurmrestd says)
    flags: tuple[str, ...]  # DRAIN, NOT_RESPONDING, ...
    cpus: int
    memory_mib: int
    gpu_type: str  # "" when the node has no GPUs
    gpu_count: int
    gpus_used: tuple[int, ...]  # indexes in use by any job
    reason: str = ""

    @property
    def draining(self) -> bool:
        return "DRAIN" in self.flags or self.state in ("drain", "draining", "drained")

    @property
    def down(self) -> bool:
        return self.state in ("down", "fail", "failing", "future", "unknown") or bool(
            {"NOT_RESPONDING", "FAIL"} & set(self.flags)
        )

    @property
    def wholly_free(self) -> bool:
        return not self.draining and not self.down and not self.gpus_used


@dataclass(frozen=True)
class SlurmInventory:
    region: str  # the portal region's code
    host_prefix: str
    gpu_types: dict[str, str]  # Slurm GRES type -> GPU model code
    nodes: tuple[SlurmNode, ...]


@dataclass(frozen=True)
class ClusterSpec:
    """N nodes with all ``gpus_per_node`` GPUs of one type each, allocated as one."""

    cluster_id: str  # stable per cluster, e.g. "cluster-7"
    name: str
    node_count: int
    gpu_model: str  # the portal's GPU model code (mapped to a GRES type by ``gpu_types``)
    gpus_per_node: int = 8


@dataclass(frozen=True)
class ClusterStatus:
    cluster_id: str
    state: ObservedState
    nodes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # node -> GPU indexes
    started_at: int | None = None  # Unix time every node was allocated (Slurm's start time)
    detail: dict = field(default_factory=dict)


# --- the REST client -----------------------------------------------------------------------
class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class SlurmRestClient:
    """slurmrestd over a unix socket or HTTP; answers are the decoded JSON bodies.

    A connection that fails or times out raises ``TransientBackendError``; Slurm's own errors
    are returned in the body's ``errors`` (callers decide), except a body that is not JSON,
    which raises ``PermanentBackendError``.
    """

    def __init__(
        self,
        *,
        socket_path: str = "",
        url: str = "",
        user: str = "",
        token: str = "",
        api_version: str = "v0.0.38",
        timeout: float = 10,
    ) -> None:
        if bool(socket_path) == bool(url):
            raise ImproperlyConfigured("The Slurm backend needs exactly one of socket and url.")
        self.socket_path, self.url, self.timeout = socket_path, url, timeout
        self.api_version = api_version
        self.headers = {"Accept": "application/json"}
        if user:
            self.headers["X-SLURM-USER-NAME"] = user
        if token:
            self.headers["X-SLURM-USER-TOKEN"] = token
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ImproperlyConfigured(f"The Slurm url {url!r} is not an http(s) URL.")

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket_path:
            return _UnixHTTPConnection(self.socket_path, self.timeout)
        parts = urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        return kind(parts.hostname, parts.port, timeout=self.timeout)

    def request(
        self, method: str, path: str, body: dict | None = None, *, db: bool = False
    ) -> dict:
        prefix = f"/slurmdb/{self.api_version}" if db else f"/slurm/{self.api_version}"
        payload = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, prefix + path, payload, headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransientBackendError(
                f"slurmrestd did not answer {method} {path}: {exc}"
            ) from exc
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            if response.status in (502, 503, 504):
                raise TransientBackendError(f"slurmrestd: HTTP {response.status}") from None
            raise PermanentBackendError(
                f"slurmrestd answered {method} {path} with HTTP {response.status}: {raw[:200]!r}"
            ) from None
        answer.setdefault("errors", [])
        return answer

    def get(self, path: str, *, db: bool = False) -> dict:
        return self.request("GET", path, db=db)


def _errors(answer: dict) -> str:
    return "; ".join(
        e.get("description") or e.get("error") or str(e) for e in answer.get("errors", [])
    )


def _error_numbers(answer: dict) -> set[int]:
    return {e.get("error_number", e.get("error_code")) for e in answer.get("errors", []) if e} - {
        None
    }


def _indexes(text: str) -> tuple[int, ...]:
    """``0-2,5`` → (0, 1, 2, 5); ``N/A`` → ()."""
    found: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part or part == "N/A":
            continue
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return tuple(found)


def _gres_indexes(gres: str) -> tuple[int, ...]:
    """The GPU indexes of a ``gpu:h200:2(IDX:0-1)`` GRES string (several types: all)."""
    found: list[int] = []
    for match in GRES_INDEXES.finditer(gres or ""):
        found.extend(_indexes(match["idx"]))
    return tuple(sorted(set(found)))


def _expand_nodes(text: str) -> list[str]:
    """A Slurm host list (``gpu[1-2,4],login1``) as names."""
    names: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", text or ""):
        if plain:
            names.append(plain)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{prefix}{number:0{width}d}")
    return names


# --- the backend ---------------------------------------------------------------------------
class SlurmBackend(ProvisioningBackend):
    unsupported_actions = frozenset({"stop", "start", "reboot"})

    def __init__(
        self,
        alias: str = "default",
        *,
        region: str,
        gpu_types: dict[str, str],
        socket: str = "",
        url: str = "",
        user: str = "",
        token: str = "",
        api_version: str = "v0.0.38",
        partition: str = "gpu",
        host_prefix: str = "",
        job_prefix: str = "portal-",
        time_limit_minutes: int | None = None,
        working_directory: str = "/",
        holder_script: str = HOLDER_SCRIPT,
        allocate_wait_seconds: float = 5,
        timeout_seconds: float = 10,
    ) -> None:
        super().__init__(alias)
        if not region:
            raise ImproperlyConfigured("The Slurm backend needs the code of its region.")
        if not gpu_types or not isinstance(gpu_types, dict):
            raise ImproperlyConfigured(
                'The Slurm backend needs gpu_types, e.g. {"h200": "h200-sxm-141gb"}.'
            )
        self.client = SlurmRestClient(
            socket_path=socket,
            url=url,
            user=user,
            token=token,
            api_version=api_version,
            timeout=timeout_seconds,
        )
        self.region = region
        self.gpu_types = dict(gpu_types)
        self.partition = partition
        self.host_prefix = host_prefix
        self.job_prefix = job_prefix
        self.time_limit_minutes = time_limit_minutes
        self.working_directory = working_directory
        self.holder_script = holder_script
        self.allocate_wait_seconds = allocate_wait_seconds

    # --- nodes ------------------------------------------------------------------------------
    def _node(self, raw: dict) -> SlurmNode:
        match = GRES.match(raw.get("gres") or "")
        return SlurmNode(
            name=raw["name"],
            state=(raw.get("state") or "unknown").lower(),
            flags=tuple(raw.get("state_flags") or ()),
            cpus=int(raw.get("cpus") or 0),
            memory_mib=int(raw.get("real_memory") or 0),
            gpu_type=match["type"] if match else "",
            gpu_count=int(match["count"]) if match else 0,
            gpus_used=_gres_indexes(raw.get("gres_used") or ""),
            reason=raw.get("reason") or "",
        )

    def nodes(self) -> list[SlurmNode]:
        answer = self.client.get("/nodes")
        if answer["errors"]:
            raise TransientBackendError(f"Slurm did not list its nodes: {_errors(answer)}")
        partition = self._partition_nodes()
        return [
            self._node(raw)
            for raw in answer.get("nodes", [])
            if partition is None or raw["name"] in partition
        ]

    def _partition_nodes(self) -> set[str] | None:
        answer = self.client.get(f"/partition/{self.partition}")
        partitions = answer.get("partitions") or []
        if answer["errors"] or not partitions:
            raise PermanentBackendError(
                f"Slurm has no partition {self.partition!r}: {_errors(answer)}"
            )
        return set(_expand_nodes(partitions[0].get("nodes") or ""))

    def inventory(self) -> SlurmInventory:
        """What the cluster has, for ``portal.catalog.slurm_sync`` to mirror."""
        return SlurmInventory(
            region=self.region,
            host_prefix=self.host_prefix,
            gpu_types=self.gpu_types,
            nodes=tuple(self.nodes()),
        )

    def node_for_host(self, host_name: str) -> str:
        if self.host_prefix and not host_name.startswith(self.host_prefix):
            raise PermanentBackendError(f"Host {host_name} is not a node of this Slurm cluster.")
        return host_name.removeprefix(self.host_prefix)

    # --- jobs -------------------------------------------------------------------------------
    def _job_name(self, machine_id: str) -> str:
        return f"{self.job_prefix}{machine_id}"

    def _cluster_job_name(self, cluster_id: str) -> str:
        return f"{self.job_prefix}{CLUSTER_MARK}{cluster_id}"

    def _jobs_named(self, name: str) -> list[dict]:
        answer = self.client.get("/jobs")
        if answer["errors"]:
            raise TransientBackendError(f"Slurm did not list its jobs: {_errors(answer)}")
        return sorted(
            (job for job in answer.get("jobs", []) if job.get("name") == name),
            key=lambda job: job["job_id"],
        )

    def _live_job(self, name: str) -> dict | None:
        live = [j for j in self._jobs_named(name) if j.get("job_state") in LIVE_JOB_STATES]
        return live[-1] if live else None

    def _submit(self, *, name: str, job: dict) -> int:
        body = {
            "job": {
                "name": name,
                "partition": self.partition,
                "requeue": False,
                "current_working_directory": self.working_directory,
                "standard_output": "/dev/null",
                "standard_error": "/dev/null",
                "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
                **({"time_limit": self.time_limit_minutes} if self.time_limit_minutes else {}),
                **job,
            },
            "script": self.holder_script,
        }
        answer = self.client.request("POST", "/job/submit", body)
        if answer["errors"] or not answer.get("job_id"):
            message = _errors(answer) or "no job id"
            # 2006 node count, 2014 configuration unavailable, 2072 GRES (ESLURM_*)
            raise PermanentBackendError(f"Slurm refused the allocation: {message}")
        return int(answer["job_id"])

    def _job(self, job_id: int) -> dict | None:
        answer = self.client.get(f"/job/{job_id}")
        jobs = answer.get("jobs") or []
        if jobs:
            return jobs[0]
        if 2017 in _error_numbers(answer):  # ESLURM_INVALID_JOB_ID: forgotten by slurmctld
            return None
        raise TransientBackendError(f"Slurm did not describe job {job_id}: {_errors(answer)}")

    def _cancel(self, job_id: int) -> None:
        answer = self.client.request("DELETE", f"/job/{job_id}")
        # ESLURM_INVALID_JOB_ID (2017, forgotten) and ESLURM_ALREADY_DONE (2021) are done too
        if answer["errors"] and not {2017, 2021} & _error_numbers(answer):
            raise TransientBackendError(f"Slurm did not cancel job {job_id}: {_errors(answer)}")

    def _job_nodes(self, job: dict) -> dict[str, tuple[int, ...]]:
        names = _expand_nodes(job.get("nodes") or "")
        details = job.get("gres_detail") or []
        if job.get("job_state") not in ("RUNNING", "SUSPENDED", "RESIZING") or not details:
            return {}
        return {name: _gres_indexes(gres) for name, gres in zip(names, details, strict=False)}

    def _observed(self, job: dict | None) -> ObservedState:
        if job is None:
            return ObservedState.MISSING
        return JOB_STATES.get(job.get("job_state", ""), ObservedState.TERMINATED)

    def _status(self, machine_id: str, job: dict | None) -> MachineStatus:
        if job is None:
            return MachineStatus(machine_id=machine_id, state=ObservedState.MISSING)
        nodes = self._job_nodes(job)
        node = next(iter(nodes), job.get("nodes") or "")
        return MachineStatus(
            machine_id=machine_id,
            state=self._observed(job),
            host_name=f"{self.host_prefix}{node}" if node else "",
            detail={
                "slurm_job_id": job["job_id"],
                "slurm_state": job.get("job_state", ""),
                "slurm_reason": job.get("state_reason", ""),
                "gpus": {f"{self.host_prefix}{n}": list(idx) for n, idx in nodes.items()},
            },
        )

    def _from_accounting(self, name: str) -> dict | None:
        """The latest job of this name slurmdbd remembers, shaped like slurmctld's answer."""
        answer = self.client.get(f"/jobs?job_name={quote(name)}", db=True)
        jobs = [j for j in answer.get("jobs") or [] if j.get("name") == name]
        if not jobs:
            return None
        job = max(jobs, key=lambda j: j["job_id"])
        state = job.get("state") or {}
        return {
            "job_id": job["job_id"],
            "job_state": state.get("current", "COMPLETED"),
            "state_reason": state.get("reason", ""),
            "nodes": job.get("nodes", ""),
        }

    def _latest(self, name: str) -> dict | None:
        jobs = self._jobs_named(name)
        if jobs:
            return jobs[-1]
        return self._from_accounting(name)

    # --- the interface ----------------------------------------------------------------------
    def create(self, spec: MachineSpec) -> MachineStatus:
        name = self._job_name(spec.machine_id)
        existing = self._live_job(name)
        if existing is not None:
            return self._status(spec.machine_id, existing)
        node_name = self.node_for_host(spec.host_name)
        node = next((n for n in self.nodes() if n.name == node_name), None)
        if node is None:
            raise PermanentBackendError(f"Slurm has no node {node_name} in {self.partition}.")
        count = len(spec.gpus)
        if count > node.gpu_count:
            raise PermanentBackendError(
                f"Node {node_name} has {node.gpu_count} GPUs; {count} were asked for."
            )
        job: dict[str, Any] = {"nodelist": node_name, "nodes": "1", "tasks": 1}
        if count:
            job["gpus_per_node"] = f"{node.gpu_type}:{count}"
        if count and count == node.gpu_count:
            job["exclusive"] = "exclusive"  # every GPU: the whole node
        else:
            job["cpus_per_task"] = spec.vcpus
            job["memory_per_node"] = spec.ram_gib * 1024
        job_id = self._submit(name=name, job=job)
        started = self._await_start(job_id)
        if started is None:
            raise CapacityError(
                f"Slurm did not give node {node_name} {count} GPUs: other jobs hold them."
            )
        return self._status(spec.machine_id, started)

    def _await_start(self, job_id: int) -> dict | None:
        """The job once Slurm has started (or ended) it; None, with the job cancelled, when it
        still waits for nodes other jobs hold after ``allocate_wait_seconds``: the portal
        never queues an allocation it has already promised, nor holds part of one."""
        deadline = time.monotonic() + self.allocate_wait_seconds
        while True:
            job = self._job(job_id)
            if job is None or job.get("job_state") != "PENDING":
                return job
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self._cancel(job_id)
        return None

    def describe(self, machine_id: str) -> MachineStatus:
        return self._status(machine_id, self._latest(self._job_name(machine_id)))

    def terminate(self, machine_id: str) -> MachineStatus:
        return self._end(self._job_name(machine_id), machine_id)

    def _end(self, name: str, machine_id: str) -> MachineStatus:
        for job in self._jobs_named(name):
            if job.get("job_state") in LIVE_JOB_STATES:
                self._cancel(job["job_id"])
        latest = self._latest(name)
        if latest is None:
            return MachineStatus(machine_id=machine_id, state=ObservedState.TERMINATED)
        status = self._status(machine_id, latest)
        if status.state in (ObservedState.PROVISIONING, ObservedState.RUNNING):
            # cancelled a moment ago: slurmctld ends it (COMPLETING) as it answers
            status = MachineStatus(
                machine_id=machine_id,
                state=ObservedState.TERMINATED,
                host_name=status.host_name,
                detail={**status.detail, "slurm_state": "CANCELLED"},
            )
        return status

    def list_machines(self) -> list[MachineStatus]:
        answer = self.client.get("/jobs")
        if answer["errors"]:
            raise TransientBackendError(f"Slurm did not list its jobs: {_errors(answer)}")
        return [
            self._status(job["name"].removeprefix(self.job_prefix), job)
            for job in answer.get("jobs", [])
            if str(job.get("name", "")).startswith(self.job_prefix)
            and CLUSTER_MARK not in job["name"]  # clusters are not machines
            and job.get("job_state") in LIVE_JOB_STATES
        ]

    def _unsupported(self, action: str):
        raise UnsupportedOperation(
            f"Slurm cannot {action} an allocation: its GPUs are given back when it ends. "
            "Terminate it instead."
        )

    def start(self, spec: MachineSpec) -> MachineStatus:
        self._unsupported("start")

    def stop(self, machine_id: str) -> MachineStatus:
        self._unsupported("stop")

    def reboot(self, machine_id: str) -> MachineStatus:
        self._unsupported("reboot")

    # --- clusters (N nodes x all their GPUs, allocated as one) ------------------------------
    def _gres_type(self, gpu_model: str) -> str:
        for gres_type, code in self.gpu_types.items():
            if code == gpu_model:
                return gres_type
        raise PermanentBackendError(f"No Slurm GPU type is mapped to the GPU model {gpu_model}.")

    def _cluster_status(self, cluster_id: str, job: dict | None) -> ClusterStatus:
        state = self._observed(job)
        if job is None:
            return ClusterStatus(cluster_id=cluster_id, state=state)
        nodes = self._job_nodes(job)
        return ClusterStatus(
            cluster_id=cluster_id,
            state=state,
            nodes={f"{self.host_prefix}{n}": idx for n, idx in nodes.items()},
            started_at=job.get("start_time") if state == ObservedState.RUNNING else None,
            detail={
                "slurm_job_id": job["job_id"],
                "slurm_state": job.get("job_state", ""),
                "slurm_reason": job.get("state_reason", ""),
            },
        )

    def create_cluster(self, spec: ClusterSpec) -> ClusterStatus:
        """All ``node_count`` nodes at once, or ``SlurmCapacityError`` and nothing held."""
        name = self._cluster_job_name(spec.cluster_id)
        existing = self._live_job(name)
        if existing is not None:
            return self._cluster_status(spec.cluster_id, existing)
        gres_type = self._gres_type(spec.gpu_model)
        fitting = [
            n for n in self.nodes() if n.gpu_type == gres_type and n.gpu_count >= spec.gpus_per_node
        ]
        free = [n for n in fitting if n.wholly_free]
        if len(free) < spec.node_count:
            raise self._too_few(spec, len(free))
        job_id = self._submit(
            name=name,
            job={
                "nodes": str(spec.node_count),
                "exclusive": "exclusive",
                "gpus_per_node": f"{gres_type}:{spec.gpus_per_node}",
                "tasks_per_node": 1,
            },
        )
        started = self._await_start(job_id)
        if started is not None:
            return self._cluster_status(spec.cluster_id, started)
        # another job took some of the nodes first: none of them is held
        free_now = sum(1 for n in self.nodes() if n.gpu_type == gres_type and n.wholly_free)
        raise self._too_few(spec, free_now)

    def _too_few(self, spec: ClusterSpec, free: int) -> SlurmCapacityError:
        return SlurmCapacityError(
            f"A cluster of {spec.node_count} nodes x {spec.gpus_per_node} {spec.gpu_model} "
            f"needs {spec.node_count} free nodes; {free} are free.",
            requested_nodes=spec.node_count,
            free_nodes=free,
        )

    def describe_cluster(self, cluster_id: str) -> ClusterStatus:
        return self._cluster_status(cluster_id, self._latest(self._cluster_job_name(cluster_id)))

    def terminate_cluster(self, cluster_id: str) -> ClusterStatus:
        status = self._end(self._cluster_job_name(cluster_id), cluster_id)
        return ClusterStatus(cluster_id=cluster_id, state=status.state, detail=dict(status.detail))
