"""The portal's hosts as a mirror of a Slurm cluster (``portal.provisioning.slurm``).

``hosts_sync_slurm`` reads the cluster's nodes from the backend and makes each node of its
partition a host of the backend's region (``managed_by`` = the backend's alias), with its vCPUs
and memory, and one GPU per GRES GPU of a mapped type (``gpu:h200:8`` → 8 GPUs of the model
``gpu_types["h200"]`` names, indexes 0-7 as Slurm numbers them). Its state follows Slurm:
idle, mixed, allocated → ``active``; drained or draining → ``draining``; down, failing, not
responding → ``offline``; a host whose node is gone from the partition goes ``offline`` (kept:
its history and allocations point at it).

Slurm's answer is the truth also for what is in use: GPUs its jobs hold that no allocation of
the portal accounts for (jobs of the centre's other users) are held by one allocation per host
without an instance type (holder ``slurm:<host>``), replaced on every run, so availability never
offers them. Running it twice changes nothing the second time.

A name already taken by a host an operator registered (or another backend mirrors) is left
alone and reported. GPUs are added and removed as the node's count changes; a GPU still claimed
by an allocation is kept until it is released.
"""

from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.catalog.cache import catalog_changed
from portal.catalog.errors import CatalogErrorCode
from portal.catalog.models import (
    GPU_MEMORY_SLOTS,
    Allocation,
    Gpu,
    GpuModel,
    GpuSlotClaim,
    Host,
    HostState,
    Region,
)
from portal.errors import InvalidInput
from portal.provisioning import get_backend
from portal.provisioning.slurm import SlurmBackend, SlurmInventory, SlurmNode

FOREIGN_HOLDER = "slurm:{host}"


@dataclass(frozen=True)
class SlurmSyncResult:
    created: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # state, size or GPUs changed
    offline: tuple[str, ...] = ()  # gone from Slurm
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why
    foreign_gpus: dict[str, int] = field(default_factory=dict)  # host -> GPUs others hold


def host_state_of(node: SlurmNode) -> str:
    if node.down:
        return HostState.OFFLINE
    if node.draining:
        return HostState.DRAINING
    return HostState.ACTIVE


def hosts_sync_slurm(*, alias: str = "slurm", actor: Actor | None = None) -> SlurmSyncResult:
    """Mirror the Slurm cluster of backend ``alias`` into the hosts (see the module)."""
    backend = get_backend(alias)
    if not isinstance(backend, SlurmBackend):
        raise InvalidInput(
            _("The provisioning backend '%(alias)s' is not a Slurm cluster.") % {"alias": alias},
            code=CatalogErrorCode.HOST_INVALID,
        )
    inventory = backend.inventory()  # asked before the transaction: no lock waits on Slurm
    return _apply(inventory, alias=alias, actor=actor)


@transaction.atomic
def _apply(inventory: SlurmInventory, *, alias: str, actor: Actor | None) -> SlurmSyncResult:
    actor = actor or Actor(user=None, organization=None, role=None)
    region = Region.objects.filter(code=inventory.region).first()
    if region is None:
        raise InvalidInput(
            _("The Slurm cluster's region '%(code)s' does not exist; create it first.")
            % {"code": inventory.region},
            code=CatalogErrorCode.REGION_INVALID,
        )
    models = {m.code: m for m in GpuModel.objects.filter(code__in=inventory.gpu_types.values())}
    missing = sorted(set(inventory.gpu_types.values()) - set(models))
    if missing:
        raise InvalidInput(
            _("The Slurm GPU types name GPU models that do not exist: %(codes)s.")
            % {"codes": ", ".join(missing)},
            code=CatalogErrorCode.GPU_UNKNOWN,
        )
    names = {f"{inventory.host_prefix}{node.name}": node for node in inventory.nodes}
    # Locked in name order (the house order: hosts before instances), also the gone ones.
    hosts = {
        host.name: host
        for host in Host.objects.select_for_update()
        .filter(Q(name__in=list(names)) | Q(managed_by=alias))
        .order_by("name")
    }
    created, changed, offline, foreign = [], [], [], {}
    skipped: dict[str, str] = {}
    for name, node in sorted(names.items()):
        model = models.get(inventory.gpu_types.get(node.gpu_type, ""))
        if node.gpu_count and model is None:
            skipped[node.name] = f"GPU type {node.gpu_type!r} is not in gpu_types"
        host = hosts.get(name)
        if host is not None and host.managed_by != alias:
            skipped[node.name] = f"host {name} is not managed by {alias}"
            continue
        if host is None:
            host = Host.objects.create(
                name=name,
                region=region,
                state=host_state_of(node),
                vcpus=max(node.cpus, 1),
                ram_gib=max(node.memory_mib // 1024, 1),
                managed_by=alias,
            )
            created.append(name)
            audit_record(
                actor=actor,
                action="host.slurm_sync",
                target=host,
                details={"node": node.name, "created": True, "state": host.state},
            )
        elif _update_host(host, node, region):
            changed.append(name)
            audit_record(
                actor=actor,
                action="host.slurm_sync",
                target=host,
                details={"node": node.name, "state": host.state},
            )
        gpus_changed = _sync_gpus(host, node if model is not None else None, model)
        if gpus_changed and name not in created and name not in changed:
            changed.append(name)
        held = _hold_foreign(host, node)
        if held:
            foreign[name] = held
    for name, host in sorted(hosts.items()):
        if name in names or host.managed_by != alias:
            continue
        if host.state != HostState.OFFLINE:
            host.state = HostState.OFFLINE
            host.save(update_fields=["state"])
            offline.append(name)
            audit_record(
                actor=actor,
                action="host.slurm_sync",
                target=host,
                details={"gone": True, "state": host.state},
            )
    if created or changed or offline:
        catalog_changed()
    return SlurmSyncResult(
        created=tuple(created),
        changed=tuple(changed),
        offline=tuple(offline),
        skipped=skipped,
        foreign_gpus=foreign,
    )


def _update_host(host: Host, node: SlurmNode, region: Region) -> bool:
    wanted = {
        "region_id": region.pk,
        "state": host_state_of(node),
        "vcpus": max(node.cpus, 1),
        "ram_gib": max(node.memory_mib // 1024, 1),
    }
    fields = [name for name, value in wanted.items() if getattr(host, name) != value]
    for name in fields:
        setattr(host, name, wanted[name])
    if fields:
        host.save(update_fields=fields)
    return bool(fields)


def _sync_gpus(host: Host, node: SlurmNode | None, model: GpuModel | None) -> bool:
    """The host's GPUs are the node's (none when its type is not mapped)."""
    count = node.gpu_count if node is not None and model is not None else 0
    existing = {gpu.index: gpu for gpu in host.gpus.all()}
    changed = False
    for index in range(count):
        gpu = existing.get(index)
        if gpu is None:
            Gpu.objects.create(
                host=host,
                index=index,
                uuid=f"slurm-{host.name}-gpu{index}"[:60],
                pci_bus_id=f"slurm:{index}",
                gpu_model=model,
                memory_mib=model.memory_gb * 1024,
            )
            changed = True
        elif gpu.gpu_model_id != model.pk and not gpu.claims.exists():
            gpu.gpu_model, gpu.memory_mib = model, model.memory_gb * 1024
            gpu.save(update_fields=["gpu_model", "memory_mib"])
            changed = True
    for index, gpu in existing.items():
        if index >= count and not gpu.claims.exists():
            gpu.delete()
            changed = True
    return changed


def _hold_foreign(host: Host, node: SlurmNode) -> int:
    """Hold the GPUs Slurm's jobs use beyond what the portal's allocations claim; returns
    how many are held."""
    holder = FOREIGN_HOLDER.format(host=host.name)
    current = Allocation.objects.filter(holder=holder, released_at__isnull=True).first()
    gpus = {gpu.index: gpu for gpu in host.gpus.all()}
    ours = set(
        GpuSlotClaim.objects.filter(gpu__host=host, allocation__released_at__isnull=True)
        .exclude(allocation__holder=holder)
        .values_list("gpu__index", flat=True)
        .distinct()
    )
    used = {index for index in node.gpus_used if index in gpus}
    needed = max(0, len(used) - len(ours))
    chosen = sorted(used - ours)[:needed]
    if len(chosen) < needed:  # Slurm used GPUs the portal placed on: hold free ones instead
        free = sorted(set(gpus) - ours - set(chosen))
        chosen += free[: needed - len(chosen)]
    wanted = sorted(gpus[i].uuid for i in chosen)
    if current is not None and sorted(s["gpu"] for s in current.gpu_slots) == wanted:
        return len(chosen)
    if current is not None:
        GpuSlotClaim.objects.filter(allocation=current).delete()
        current.released_at = timezone.now()
        current.save(update_fields=["released_at"])
    if chosen:
        allocation = Allocation.objects.create(
            host=host,
            instance_type=None,
            vcpus=0,
            ram_gib=0,
            gpu_slots=[{"gpu": gpus[i].uuid, "start": 0, "size": GPU_MEMORY_SLOTS} for i in chosen],
            holder=holder,
        )
        GpuSlotClaim.objects.bulk_create(
            GpuSlotClaim(gpu=gpus[i], slot=slot, allocation=allocation)
            for i in chosen
            for slot in range(GPU_MEMORY_SLOTS)
        )
    catalog_changed()
    return len(chosen)
