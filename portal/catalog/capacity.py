"""Capacity: what is free on the hosts, how many more instances fit, and where one would go.

The model
---------
Each GPU has 8 memory slots (``GPU_MEMORY_SLOTS``). A whole-GPU instance claims all 8 slots of
each of its GPUs; a MIG instance claims the slots of one placement of its profile (from the
``nvidia-smi mig -lgipp`` table: a profile of size *k* may start only at its listed slots and
covers slots ``start .. start+k-1``). A ``GpuSlotClaim`` row is unique per (GPU, slot), so two
allocations can never hold the same slot: a whole GPU cannot host slices, slices of different
profiles on one GPU cannot overlap, and no GPU is sold twice, even under concurrent launches.
Hosts also give each instance its vCPUs and RAM: the vCPUs and RAM of a host's active
allocations never add up to more than it has. Only ``active`` hosts take new instances.

A CPU-only allocation (an instance started without its GPUs, ``cpu_only``) holds vCPUs and RAM
and no GPU slot, so what GPU types can still be placed is unchanged wherever vCPUs and RAM are
left for them. It goes on any active host of the region with room, best fit: the fewest free
vCPUs, then the least free RAM, then the name.

Placement (best fit, deterministic)
-----------------------------------
Whole GPUs: among the region's active hosts with enough free vCPUs and RAM and at least *n* free
GPUs of the model on one host, take the host with the *fewest* free GPUs of that model (then the
fewest free vCPUs, then the name), so large free blocks stay for large instances. On that host,
take GPUs that are not enabled for MIG first, then the lowest indexes.

MIG slices: among all (host, GPU, start) where the profile fits, prefer a GPU that already holds
slices over an untouched one (untouched GPUs stay whole-GPU capable), then the GPU with the
fewest free slots, then the host with the fewest free vCPUs, host name and GPU index, and on the
GPU the *highest* allowed start: small slices fill from the top so the low starts that only the
large profiles may use (4g, 7g at slot 0) stay free.

Queries
-------
``availability()`` reads hosts, GPUs, claims, allocation totals, instance types and regions in
six queries, whatever their number; the rest is arithmetic in memory.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from portal.catalog.cache import catalog_changed
from portal.catalog.errors import CatalogErrorCode
from portal.catalog.models import (
    GPU_MEMORY_SLOTS,
    Allocation,
    Gpu,
    GpuSlotClaim,
    Host,
    HostState,
    InstanceType,
    Region,
)
from portal.catalog.types import CpuShape, GpuSlot, Placement
from portal.errors import Conflict
from portal.sql import insert, placeholders, rows

FULL_MASK = (1 << GPU_MEMORY_SLOTS) - 1


class CapacityUnavailable(Conflict):
    code = CatalogErrorCode.CAPACITY_UNAVAILABLE
    default_message = _("There is no free capacity for this instance type in this region.")


@dataclass(slots=True)
class _GpuState:
    id: int
    uuid: str
    index: int
    model_id: int
    mig_enabled: bool
    mask: int = 0  # bit i set = slot i claimed

    @property
    def free_slots(self) -> int:
        return GPU_MEMORY_SLOTS - self.mask.bit_count()


@dataclass(slots=True)
class _HostState:
    id: int
    name: str
    region_id: int
    free_vcpus: int
    free_ram_gib: int
    gpus: list[_GpuState] = field(default_factory=list)

    def free_whole(self, model_id: int) -> list[_GpuState]:
        return [g for g in self.gpus if g.model_id == model_id and g.mask == 0]


@dataclass(frozen=True)
class _Shape:
    """What an instance type needs, reduced to what placement looks at."""

    model_id: int
    gpu_count: int
    vcpus: int
    ram_gib: int
    mig_size: int | None = None
    mig_starts: tuple[int, ...] = ()
    cpu_only: bool = False  # vCPUs and RAM only, no GPU slot

    @classmethod
    def of(cls, instance_type: InstanceType) -> "_Shape":
        profile = instance_type.mig_profile
        return cls(
            model_id=instance_type.gpu_model_id,
            gpu_count=instance_type.gpu_count,
            vcpus=instance_type.vcpus,
            ram_gib=instance_type.ram_gib,
            mig_size=profile.memory_slots if profile else None,
            mig_starts=tuple(sorted(profile.placements)) if profile else (),
        )

    @classmethod
    def cpu(cls, instance_type: InstanceType, shape: CpuShape) -> "_Shape":
        return cls(
            model_id=instance_type.gpu_model_id,
            gpu_count=0,
            vcpus=shape.vcpus,
            ram_gib=shape.ram_gib,
            cpu_only=True,
        )


def _slot_mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


@lru_cache(maxsize=8192)
def _mig_fits(mask: int, size: int, starts: tuple[int, ...]) -> int:
    """How many more slices of one profile fit on a GPU whose claimed slots are ``mask``.

    Greedy from the lowest start is optimal here: placements of one profile are aligned to their
    size, so taking the first free one never blocks two others.
    """
    count = 0
    for start in starts:
        slots = _slot_mask(start, size)
        if not mask & slots:
            mask |= slots
            count += 1
    return count


@lru_cache(maxsize=8192)
def _highest_free_start(mask: int, size: int, starts: tuple[int, ...]) -> int | None:
    """The highest start of a profile of ``size`` free on a GPU whose claimed slots are
    ``mask`` (None: none is)."""
    for start in reversed(starts):
        if not mask & _slot_mask(start, size):
            return start
    return None


def _load(host_ids: Iterable[int] | None = None, region_id: int | None = None) -> list[_HostState]:
    """Free capacity of the active hosts (all, or the given ones), in four queries."""
    hosts = Host.objects.filter(state=HostState.ACTIVE, region__is_active=True)
    if host_ids is not None:
        hosts = hosts.filter(pk__in=list(host_ids))
    if region_id is not None:
        hosts = hosts.filter(region_id=region_id)
    states = {
        row["id"]: _HostState(
            id=row["id"],
            name=row["name"],
            region_id=row["region_id"],
            free_vcpus=row["vcpus"],
            free_ram_gib=row["ram_gib"],
        )
        for row in hosts.values("id", "name", "region_id", "vcpus", "ram_gib")
    }
    if not states:
        return []
    used = (
        Allocation.objects.filter(host_id__in=states, released_at__isnull=True)
        .values("host_id")
        .annotate(vcpus=Sum("vcpus"), ram=Sum("ram_gib"))
    )
    for row in used:
        states[row["host_id"]].free_vcpus -= row["vcpus"] or 0
        states[row["host_id"]].free_ram_gib -= row["ram"] or 0
    gpus: dict[int, _GpuState] = {}
    for row in (
        Gpu.objects.filter(host_id__in=states)
        .order_by("host_id", "index")
        .values("id", "host_id", "uuid", "index", "gpu_model_id", "mig_enabled")
    ):
        gpu = _GpuState(
            id=row["id"],
            uuid=row["uuid"],
            index=row["index"],
            model_id=row["gpu_model_id"],
            mig_enabled=row["mig_enabled"],
        )
        gpus[gpu.id] = gpu
        states[row["host_id"]].gpus.append(gpu)
    for gpu_id, slot in GpuSlotClaim.objects.filter(gpu__host_id__in=states).values_list(
        "gpu_id", "slot"
    ):
        gpus[gpu_id].mask |= 1 << slot
    return list(states.values())


def _count_on_host(host: _HostState, shape: _Shape) -> int:
    """How many more instances of ``shape`` fit on one host."""
    by_cpu = host.free_vcpus // shape.vcpus if shape.vcpus else 10**6
    by_ram = host.free_ram_gib // shape.ram_gib if shape.ram_gib else 10**6
    limit = min(by_cpu, by_ram)
    if limit <= 0:
        return 0
    if shape.mig_size is None:
        by_gpu = len(host.free_whole(shape.model_id)) // shape.gpu_count
    else:
        by_gpu = sum(
            _mig_fits(g.mask, shape.mig_size, shape.mig_starts)
            for g in host.gpus
            if g.model_id == shape.model_id and g.mig_enabled
        )
    return min(limit, by_gpu)


def availability(
    instance_types: Iterable[InstanceType] | None = None,
    region_codes: dict[int, str] | None = None,
) -> dict[int, dict[str, int]]:
    """For every instance type: region code -> how many more instances could be placed now.

    Regions without room are left out. Pass instance types already loaded (with
    ``mig_profile``) and a {region id: code} map to save their queries.
    """
    if instance_types is None:
        instance_types = InstanceType.objects.filter(is_active=True).select_related("mig_profile")
    types = list(instance_types)
    hosts = _load()
    if region_codes is None:
        region_codes = dict(Region.objects.values_list("id", "code"))
    by_region_model: dict[tuple[int, int], list[_HostState]] = defaultdict(list)
    for host in hosts:
        for model_id in {g.model_id for g in host.gpus}:
            by_region_model[(host.region_id, model_id)].append(host)
    regions_of_model: dict[int, list[int]] = defaultdict(list)
    for region_id, model_id in by_region_model:
        regions_of_model[model_id].append(region_id)
    result: dict[int, dict[str, int]] = {}
    for instance_type in types:
        shape = _Shape.of(instance_type)
        counts = {}
        for region_id in regions_of_model.get(shape.model_id, []):
            n = sum(_count_on_host(h, shape) for h in by_region_model[(region_id, shape.model_id)])
            if n > 0 and region_id in region_codes:
                counts[region_codes[region_id]] = n
        result[instance_type.pk] = counts
    return result


def _choose(hosts: list[_HostState], shape: _Shape) -> Placement | None:
    fitting = [h for h in hosts if h.free_vcpus >= shape.vcpus and h.free_ram_gib >= shape.ram_gib]
    if shape.cpu_only:
        if not fitting:
            return None
        host = min(fitting, key=lambda h: (h.free_vcpus, h.free_ram_gib, h.name))
        return Placement(host_id=host.id, host_name=host.name, slots=())
    if shape.mig_size is None:
        candidates = []
        for host in fitting:
            free = host.free_whole(shape.model_id)
            if len(free) >= shape.gpu_count:
                candidates.append(((len(free), host.free_vcpus, host.name), host, free))
        if not candidates:
            return None
        _score, host, free = min(candidates, key=lambda c: c[0])
        chosen = sorted(free, key=lambda g: (g.mig_enabled, g.index))[: shape.gpu_count]
        slots = tuple(
            GpuSlot(g.id, g.uuid, 0, GPU_MEMORY_SLOTS)
            for g in sorted(chosen, key=lambda g: g.index)
        )
        return Placement(host_id=host.id, host_name=host.name, slots=slots)
    best = None
    model_id, size, starts = shape.model_id, shape.mig_size, shape.mig_starts
    for host in fitting:
        for gpu in host.gpus:
            if gpu.model_id != model_id or not gpu.mig_enabled:
                continue
            # on one GPU the best key is its highest free start (the key's -start)
            start = _highest_free_start(gpu.mask, size, starts)
            if start is None:
                continue
            key = (gpu.mask == 0, gpu.free_slots, host.free_vcpus, host.name, gpu.index, -start)
            if best is None or key < best[0]:
                best = (key, host, gpu, start)
    if best is None:
        return None
    _score, host, gpu, start = best
    return Placement(
        host_id=host.id,
        host_name=host.name,
        slots=(GpuSlot(gpu.id, gpu.uuid, start, shape.mig_size),),
    )


def placement(*, instance_type: InstanceType, region: Region) -> Placement | None:
    """Which host and GPUs (or MIG slot) a launch of this type in this region would get now.

    Read-only; ``allocation_reserve`` calls it again under row locks before it claims anything.
    """
    return _choose(_load(region_id=region.pk), _Shape.of(instance_type))


def capacity_unavailable(instance_type: InstanceType, region: Region) -> CapacityUnavailable:
    """The error for a launch that found no room, naming where this type and similar types fit."""
    similar = list(
        InstanceType.objects.filter(is_active=True, gpu_model_id=instance_type.gpu_model_id)
        .exclude(pk=instance_type.pk)
        .select_related("mig_profile")
    )
    free = availability([instance_type, *similar])
    regions = sorted(free.get(instance_type.pk, {}))
    similar_here = sorted(t.name for t in similar if free.get(t.pk, {}).get(region.code))
    message = f"No capacity for {instance_type.name} in {region.code} right now."
    if regions:
        message += f" It is available in {', '.join(regions)}."
    if similar_here:
        message += f" Similar types available in {region.code}: {', '.join(similar_here)}."
    return CapacityUnavailable(
        message,
        details={"regions_with_capacity": regions, "similar_types_available_here": similar_here},
    )


# The reservation's reads are plain SQL: they run on every launch, and building them through the
# ORM cost more than running them. Integers, names and flags only. Each is a simple indexed
# read (by region, by host id, by GPU model and host id), so its plan does not depend on
# statistics that a freshly loaded fleet may not have yet.
_REGION_HOSTS_SQL = (
    "SELECT h.id, h.name, h.vcpus, h.ram_gib FROM catalog_host h"
    " JOIN catalog_region r ON r.id = h.region_id"
    " WHERE h.region_id = %s AND h.state = %s AND r.is_active"
)
_USED_SQL = (
    "SELECT host_id, SUM(vcpus), SUM(ram_gib) FROM catalog_allocation"
    " WHERE released_at IS NULL AND host_id IN ({hosts}) GROUP BY host_id"
)
# A reservation reads only the GPUs its choice can fall on (see ``_reserve_on_one_host``): for a
# MIG slice first those that hold slices already and have a slot free, then the untouched ones;
# for whole GPUs the untouched ones.
_GPUS_CLAIMED_SQL = (
    'SELECT g.id, g.host_id, g.uuid, g."index", g.mig_enabled, SUM(1 << k.slot)'
    " FROM catalog_gpuslotclaim k JOIN catalog_gpu g ON g.id = k.gpu_id"
    " WHERE g.gpu_model_id = %s AND g.mig_enabled AND g.host_id IN ({hosts})"
    ' GROUP BY g.id, g.host_id, g.uuid, g."index", g.mig_enabled'
    " HAVING SUM(1 << k.slot) <> %s"
    ' ORDER BY g.host_id, g."index"'
)
_GPUS_UNCLAIMED_SQL = (
    'SELECT g.id, g.host_id, g.uuid, g."index", g.mig_enabled, 0 FROM catalog_gpu g'
    " WHERE g.gpu_model_id = %s AND g.host_id IN ({hosts})"
    " AND NOT EXISTS (SELECT 1 FROM catalog_gpuslotclaim k WHERE k.gpu_id = g.id)"
    ' ORDER BY g.host_id, g."index"'
)
_LOCK_HOST_SQL = "SELECT id, name, vcpus, ram_gib FROM catalog_host WHERE id = %s AND state = %s"
CLAIMED, UNCLAIMED, NO_GPUS = "claimed", "unclaimed", "none"


def _hosts_free(*, region_id: int, locked: list | None = None) -> dict[int, _HostState]:
    """The region's active hosts with their vCPUs and RAM less what their open allocations
    use (two queries), their GPUs not read yet. With ``locked`` (the row ``_lock_host`` read),
    that host only (one query)."""
    found = [locked] if locked else rows(_REGION_HOSTS_SQL, [region_id, HostState.ACTIVE])
    states = {
        pk: _HostState(id=pk, name=name, region_id=region_id, free_vcpus=vcpus, free_ram_gib=ram)
        for pk, name, vcpus, ram in found
    }
    if states:
        ids = list(states)
        used = _USED_SQL.format(hosts=placeholders(ids))  # nosec B608: marks only
        for host, vcpus, ram in rows(used, ids):
            states[host].free_vcpus -= vcpus or 0
            states[host].free_ram_gib -= ram or 0
    return states


def _read_gpus(states: dict[int, _HostState], *, model_id: int, which: str) -> None:
    """Put on each host its GPUs of the model that are ``CLAIMED`` (enabled for MIG, holding
    slices, a slot still free) or ``UNCLAIMED``, with the slots claimed on each as a bit mask:
    one query."""
    for state in states.values():
        state.gpus = []
    if not states or which == NO_GPUS:
        return
    ids = list(states)
    marks = placeholders(ids)
    if which == CLAIMED:
        sql, params = _GPUS_CLAIMED_SQL.format(hosts=marks), [model_id, *ids, FULL_MASK]  # nosec B608: marks only
    else:
        sql, params = _GPUS_UNCLAIMED_SQL.format(hosts=marks), [model_id, *ids]  # nosec B608: marks only
    for gpu, host, uuid, index, mig, mask in rows(sql, params):
        states[host].gpus.append(_GpuState(gpu, uuid, index, model_id, bool(mig), mask or 0))


def _lock_host(host_id: int) -> list | None:
    """Lock one active host's row, unless another reservation holds it (``SKIP LOCKED``): the
    row (id, name, vCPUs, RAM) when this one has it, else None. The row itself is read as it is
    now; what its allocations use must be read by a later statement. (SQLite has no row locks:
    its writers run one at a time.)"""
    sql = _LOCK_HOST_SQL
    if connection.features.has_select_for_update_skip_locked:
        sql += " FOR UPDATE SKIP LOCKED"
    found = rows(sql, [host_id, HostState.ACTIVE])
    return found[0] if found else None


def _claim(
    chosen: Placement, instance_type: InstanceType, holder: str, shape: _Shape
) -> Allocation:
    """Write the allocation and its slot claims (plain SQL, ``portal.sql.insert``, so no
    ``post_save``: the catalog version is moved here)."""
    allocation = Allocation(
        host_id=chosen.host_id,
        instance_type=instance_type,
        vcpus=shape.vcpus,
        ram_gib=shape.ram_gib,
        gpu_slots=[{"gpu": s.gpu_uuid, "start": s.start, "size": s.size} for s in chosen.slots],
        holder=holder,
    )
    insert(allocation)
    catalog_changed()
    allocation.host_name = chosen.host_name  # what the launch's event names, without a query
    insert(
        *(
            GpuSlotClaim(gpu_id=s.gpu_id, slot=slot, allocation=allocation)
            for s in chosen.slots
            for slot in range(s.start, s.start + s.size)
        )
    )
    return allocation


class _Contended(Exception):
    """Every host the placement fits on is being placed on by another reservation."""


def _reserve_on_one_host(
    instance_type: InstanceType, region: Region, holder: str, shape: _Shape
) -> Allocation | None:
    """Place from an unlocked read of the region, then lock only the chosen host (``SKIP
    LOCKED``: a host another reservation holds is passed over for the next best) and place again
    on it from a fresh read taken after the lock. None when nothing fits; ``_Contended`` when
    every host that fits is locked by others.

    The GPUs are read in the order the placement rules prefer them, so most reservations read
    few: a MIG slice looks at the GPUs holding slices first (any of them beats an untouched
    GPU) and at the untouched ones only when none of those fits; whole GPUs are only ever
    placed on untouched ones."""
    hosts = _hosts_free(region_id=region.pk)
    passed: set[int] = set()  # locked by another reservation
    mine: set[int] = set()  # locked by this one
    if shape.cpu_only:
        kinds: tuple[str, ...] = (NO_GPUS,)  # vCPUs and RAM only: no GPU is read
    else:
        kinds = (CLAIMED, UNCLAIMED) if shape.mig_size is not None else (UNCLAIMED,)
    for which in kinds:
        # read after any lock this reservation holds: fresh for the hosts in ``mine``
        _read_gpus(hosts, model_id=shape.model_id, which=which)
        while True:
            chosen = _choose([h for h in hosts.values() if h.id not in passed], shape)
            if chosen is None:
                break  # nothing of this kind fits: the next kind of GPU, if any
            if chosen.host_id in mine:  # placed from a read taken under its lock
                return _claim(chosen, instance_type, holder, shape)
            locked = _lock_host(chosen.host_id)
            if locked is None:
                passed.add(chosen.host_id)
                continue
            mine.add(chosen.host_id)  # locked while active: read what is free on it again
            before = hosts.pop(chosen.host_id)
            fresh = _hosts_free(region_id=region.pk, locked=locked)
            _read_gpus(fresh, model_id=shape.model_id, which=which)
            hosts.update(fresh)
            if hosts.get(chosen.host_id) == before:  # nothing moved on it: the choice stands
                return _claim(chosen, instance_type, holder, shape)
    if passed:
        raise _Contended
    return None


def _reserve_locking_the_region(
    instance_type: InstanceType, region: Region, holder: str, shape: _Shape
) -> Allocation | None:
    """Lock every active host of the region with GPUs of the type's model (for a CPU-only
    shape, every active host of the region), in id order (so concurrent reservations queue
    instead of deadlocking), read them and place."""
    if shape.cpu_only:
        candidate_ids = Host.objects.filter(region=region, state=HostState.ACTIVE).values("pk")
    else:
        candidate_ids = Gpu.objects.filter(
            gpu_model_id=instance_type.gpu_model_id,
            host__region=region,
            host__state=HostState.ACTIVE,
        ).values("host_id")
    locked = list(
        Host.objects.select_for_update()
        .filter(pk__in=candidate_ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chosen = _choose(_load(host_ids=locked), shape) if locked else None
    return _claim(chosen, instance_type, holder, shape) if chosen is not None else None


def cpu_only_unavailable(instance_type: InstanceType, region: Region) -> CapacityUnavailable:
    """The error for a CPU-only start that found no host of the region with room."""
    return CapacityUnavailable(
        _(
            "No host in %(region)s has room to start %(type)s without GPUs right now. "
            "Try again later."
        )
        % {"region": region.code, "type": instance_type.name},
        details={"region": region.code, "gpus": False},
    )


def allocation_reserve(
    *,
    instance_type: InstanceType,
    region: Region,
    holder: str,
    cpu_only: CpuShape | None = None,
) -> Allocation:
    """Claim capacity for one instance, or raise ``capacity_unavailable``.

    With ``cpu_only``, the allocation holds that many vCPUs and GiB of RAM and no GPU slot
    (an instance started without its GPUs), on an active host of the region with room.

    Placement follows :func:`placement`'s rules. Only the host placed on is locked: the choice
    is made from an unlocked read, the chosen host is locked with ``SKIP LOCKED`` and read
    again, and the placement is made again from that fresh read (another host when it no longer
    fits, the next best when another reservation holds it). Launches on different hosts so run
    side by side. When every host that fits is held by other reservations, the attempt is
    rolled back (its host locks with it) and the reservation waits for the region's hosts,
    locked in id order as one queue. The (GPU, slot) unique constraint is the last guard.

    Queries (plain SQL for the reads, see ``_hosts_free`` and ``_read_gpus``): three to read the
    region, one to lock the host (reading its row), two to read what is used on it again (for a
    MIG slice that no GPU holding slices can take, one and two more), two to write the allocation and its slot claims (and a
    savepoint around them).
    """
    shape = _Shape.cpu(instance_type, cpu_only) if cpu_only else _Shape.of(instance_type)

    def unavailable() -> CapacityUnavailable:
        if cpu_only:
            return cpu_only_unavailable(instance_type, region)
        return capacity_unavailable(instance_type, region)

    try:
        with transaction.atomic():  # a savepoint: rolling back to it gives its host locks back
            allocation = _reserve_on_one_host(instance_type, region, holder, shape)
    except _Contended:
        try:
            with transaction.atomic():
                allocation = _reserve_locking_the_region(instance_type, region, holder, shape)
        except IntegrityError:  # only possible if something bypassed the host locks
            raise unavailable() from None
    except IntegrityError:
        raise unavailable() from None
    if allocation is None:
        raise unavailable()
    return allocation


@transaction.atomic
def allocation_release(*, allocation: Allocation) -> Allocation:
    """Give the capacity back. Safe to call twice."""
    allocation = Allocation.objects.select_for_update().get(pk=allocation.pk)
    if allocation.released_at is None:
        GpuSlotClaim.objects.filter(allocation=allocation).delete()
        allocation.released_at = timezone.now()
        allocation.save(update_fields=["released_at"])
    return allocation
