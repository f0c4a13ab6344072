"""Clusters: N nodes x 8 GPUs of one type, launched, run and terminated as one.

A cluster's nodes are ordinary instances (``Instance.cluster``): they are created together in
one transaction with their capacity, the backend's ``create_cluster`` is asked once for the
whole cluster, and every member moves to running at the moment the backend allocated every
node, so each is billed per GPU-second from the same moment. Not enough free capacity fails the
whole request with ``capacity_unavailable``: never a partial cluster.
"""

from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.accounts.locks import lock_organization
from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog import capacity
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import FINAL, State
from portal.compute.models import Cluster, ClusterState, Instance, InstanceEvent
from portal.compute.services._checks import check_quota, run_launch_checks
from portal.compute.services._common import (
    SYSTEM,
    announce_instance,
    record_event,
    release_capacity,
    transition,
)
from portal.compute.services.launch import LaunchRequest, _resolve
from portal.errors import InvalidInput, NotFound
from portal.provisioning import get_backend
from portal.provisioning.base import CapacityError, ObservedState
from portal.sql import insert

GPUS_PER_NODE = 8
MAX_NODES = 64


@transaction.atomic(durable=True)
def cluster_launch(
    *,
    actor: Actor,
    name: str,
    instance_type: str,
    region: str,
    node_count: int,
    ssh_key_ids: tuple[int, ...],
    image: str = "",
) -> Cluster:
    """The cluster and its ``node_count`` members in ``pending``, each with its capacity taken
    under row locks, in one transaction: any refusal leaves nothing written."""
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    organization = actor.organization
    now = timezone.now()
    if not isinstance(node_count, int) or not 1 <= node_count <= MAX_NODES:
        raise InvalidInput(
            _("A cluster has 1 to %(max)d nodes.") % {"max": MAX_NODES},
            code=ComputeErrorCode.INVALID,
            details={"node_count": f"1 to {MAX_NODES}"},
        )
    request = LaunchRequest(
        name=name, instance_type=instance_type, region=region, image=image,
        ssh_key_ids=tuple(ssh_key_ids),
    )  # fmt: skip
    name, itype, region_obj, image_obj, keys, _volumes, hourly = _resolve(
        organization, request, now
    )
    if itype.mig_profile_id is not None or itype.gpu_count != GPUS_PER_NODE:
        raise InvalidInput(
            _("A cluster's nodes are whole machines of 8 GPUs."),
            code=ComputeErrorCode.INVALID,
            details={"instance_type": f"{itype.name} does not have 8 whole GPUs."},
        )
    cluster = Cluster.objects.create(
        organization=organization,
        name=name,
        instance_type=itype,
        region=region_obj,
        node_count=node_count,
        backend=settings.PROVISIONING_BACKEND,
    )
    for number in range(1, node_count + 1):
        # each node is checked as a launch is: the GPU quota, verification and whether the
        # organisation can pay, counting the nodes before it (inserted and announced above)
        check_quota(organization, itype)
        run_launch_checks(
            organization=organization,
            instance_type=itype,
            region=region_obj,
            actor=actor,
            new_volume_gb=0,
            hourly_price=hourly,
        )
        member = Instance(
            organization=organization,
            name=f"{name}-node{number}",
            instance_type=itype,
            region=region_obj,
            image=image_obj,
            ssh_public_keys=keys,
            disk_gb=settings.COMPUTE_BOOT_DISK_GB,
            backend=cluster.backend,
            cluster=cluster,
            created_by=actor.user if actor.api_key is None else None,
            created_by_api_key=actor.api_key,
        )
        insert(member)
        # CapacityUnavailable here rolls back the cluster and every member before it
        allocation = capacity.allocation_reserve(
            instance_type=itype, region=region_obj, holder=f"instance:{member.pk}"
        )
        member.allocation, member.host_id = allocation, allocation.host_id
        member.save(update_fields=["allocation", "host"])
        announce_instance(member, None, State.PENDING, at=member.created_at, hourly_price=hourly)
        record_event(
            member,
            actor=actor.label,
            reason=gettext_noop("Launch requested"),
            to_state=State.PENDING,
            detail={"cluster": cluster.pk, "host": allocation.host_name},
        )
    audit_record(
        actor=actor,
        action="cluster.launch",
        target=cluster,
        details={"type": itype.name, "region": region_obj.code, "nodes": node_count},
    )
    transaction.on_commit(lambda: _enqueue(cluster.pk))
    return cluster


def _enqueue(cluster_id: int) -> None:
    from portal.compute.tasks import cluster_sync

    cluster_sync.delay(cluster_id)


def _locked(cluster_id: int, organization=None) -> tuple[Cluster, list[Instance]]:
    org_id = Cluster.objects.filter(pk=cluster_id).values_list("organization_id", flat=True).first()
    if org_id is None or (organization is not None and org_id != organization.pk):
        raise NotFound(_("No such cluster in this organisation."))
    if organization is None:
        lock_organization(org_id)
    cluster = (
        Cluster.objects.select_for_update()
        .select_related("instance_type__gpu_model")
        .get(pk=cluster_id)
    )
    members = list(
        Instance.objects.select_for_update(of=("self",))
        .select_related("allocation", "instance_type")
        .filter(cluster=cluster)
        .order_by("pk")
    )
    return cluster, members


def _fail(cluster: Cluster, members: list[Instance], reason: str, detail: dict) -> None:
    for member in members:
        if member.state not in FINAL:
            release_capacity(member)
            transition(member, State.FAILED, actor=SYSTEM, reason=reason, detail=detail)
    cluster.state, cluster.status_message = ClusterState.FAILED, reason[:300]
    cluster.save(update_fields=["state", "status_message"])


def cluster_sync(*, cluster_id: int) -> str:
    """Bring the cluster to what it should be: a pending one is created on the backend (once,
    all-or-nothing) and its members run from the moment every node was allocated; a
    terminating one ends its job and every member. Safe to run twice. Returns its state."""
    cluster = Cluster.objects.get(pk=cluster_id)
    backend = get_backend(cluster.backend)
    if cluster.state == ClusterState.PENDING:
        from portal.provisioning.slurm import ClusterSpec

        spec = ClusterSpec(
            cluster_id=cluster.backend_id,
            name=cluster.name,
            node_count=cluster.node_count,
            gpu_model=cluster.instance_type.gpu_model.code,
            gpus_per_node=cluster.instance_type.gpu_count,
        )
        try:
            status = backend.create_cluster(spec)
        except CapacityError as exc:
            detail = {
                "code": "capacity_unavailable",
                "requested_nodes": getattr(exc, "requested_nodes", cluster.node_count),
                "free_nodes": getattr(exc, "free_nodes", None),
            }
            with transaction.atomic():
                cluster, members = _locked(cluster_id)
                if cluster.state == ClusterState.PENDING:
                    _fail(cluster, members, str(exc), detail)
            return cluster.state
        if status.state == ObservedState.RUNNING:
            at = (
                datetime.fromtimestamp(status.started_at, tz=UTC)
                if status.started_at
                else timezone.now()
            )
            with transaction.atomic():
                cluster, members = _locked(cluster_id)
                if cluster.state == ClusterState.PENDING:
                    # Slurm's start time is in whole seconds: never before the launch itself
                    latest = InstanceEvent.objects.filter(instance__cluster=cluster).aggregate(
                        at=Max("created_at")
                    )["at"]
                    at = max(at, latest) if latest else at
                    for member in members:
                        transition(
                            member, State.PROVISIONING, actor=SYSTEM,
                            reason=gettext_noop("Provisioning"), at=at,
                        )  # fmt: skip
                        transition(
                            member, State.RUNNING, actor=SYSTEM,
                            reason=gettext_noop("Running"),
                            detail={"cluster": cluster.pk, "nodes": sorted(status.nodes)}, at=at,
                        )  # fmt: skip
                        member.running_since = at
                        member.save(update_fields=["running_since"])
                    cluster.state, cluster.running_since = ClusterState.RUNNING, at
                    cluster.save(update_fields=["state", "running_since"])
        return cluster.state
    if cluster.state == ClusterState.TERMINATING:
        backend.terminate_cluster(cluster.backend_id)
        now = timezone.now()
        with transaction.atomic():
            cluster, members = _locked(cluster_id)
            if cluster.state == ClusterState.TERMINATING:
                for member in members:
                    if member.state not in FINAL:
                        release_capacity(member)
                        member.terminated_at, member.running_since = now, None
                        member.save(update_fields=["terminated_at", "running_since"])
                        transition(
                            member, State.TERMINATED, actor=SYSTEM,
                            reason=gettext_noop("Terminated"), at=now,
                        )  # fmt: skip
                cluster.state, cluster.terminated_at = ClusterState.TERMINATED, now
                cluster.save(update_fields=["state", "terminated_at"])
    return cluster.state


@transaction.atomic(durable=True)
def cluster_terminate(*, actor: Actor, cluster_id: int) -> Cluster:
    """Terminate the cluster as one: every member moves to terminating now (billing stops), the
    backend's job is ended by the sync enqueued on commit."""
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    cluster, members = _locked(cluster_id, actor.organization)
    if cluster.state in (ClusterState.TERMINATED, ClusterState.FAILED, ClusterState.TERMINATING):
        return cluster
    for member in members:
        if member.state not in FINAL and member.state != State.TERMINATING:
            transition(
                member, State.TERMINATING, actor=actor.label,
                reason=gettext_noop("Termination requested"),
            )  # fmt: skip
    cluster.state = ClusterState.TERMINATING
    cluster.save(update_fields=["state"])
    audit_record(actor=actor, action="cluster.terminate", target=cluster, details={})
    transaction.on_commit(lambda: _enqueue(cluster.pk))
    return cluster
