"""Reads about instances and volumes: the customer's, scoped to one organisation, and what
metering needs to know of every instance's history (which ran, as what, and when)."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from operator import attrgetter

from django.db.models import Prefetch, Q, QuerySet, Sum
from django.utils.translation import gettext as _

from portal.catalog.models import Image, InstanceType, Region
from portal.compute.lifecycle import BILLED_RUNNING, COMPUTE_COMING, DISK_KEPT, State
from portal.compute.models import Cluster, Instance, InstanceEvent, Volume, VolumeState
from portal.errors import NotFound
from portal.sql import placeholders, rows


def instances_list(organization) -> QuerySet[Instance]:
    return Instance.objects.filter(organization=organization).select_related(
        "instance_type__gpu_model", "instance_type__mig_profile", "region", "image"
    )


def latest_instance_region(organization) -> str:
    """The region code of the organisation's most recently created instance, or ``""``."""
    latest = (
        Instance.objects.filter(organization=organization)
        .order_by("-created_at", "-pk")
        .values_list("region__code", flat=True)
        .first()
    )
    return latest or ""


# What the instance lists show: the page's table and the API's rows, as plain values. One query
# each, no related rows but the names.
TABLE_COLUMNS = (
    "id",
    "name",
    "state",
    "ip_address",
    "created_at",
    "ssh_user",
    "ssh_port",
    "release_at",
    "instance_type__name",
    "region__code",
)
API_COLUMNS = (
    "id",
    "name",
    "state",
    "desired_state",
    "observed_state",
    "status_message",
    "ip_address",
    "disk_gb",
    "created_at",
    "running_since",
    "terminated_at",
    "ssh_user",
    "ssh_port",
    "idle_stop_enabled",
    "idle_stop_threshold_pct",
    "idle_stop_minutes",
    "scheduled_stop_at",
    "release_at",
    "gpus",
    "backend",
    "instance_type__name",
    "region__code",
    "image__name",
)


def instances_table(organization) -> QuerySet[Instance]:
    """The organisation's instances (what ``TableRows`` reads a page of)."""
    return Instance.objects.filter(organization=organization)


class _CountedRows:
    """One list's rows for a ``Paginator``: ``count()`` and slices of dicts of ``columns``, each
    page read with the list's total in the same statement (``_page``). Given the slice the
    request will ask for (``expected``), ``count()`` reads that page, so the paginator's count
    and its page are one statement; a page past the last, or no expected slice, is counted apart
    (``_count``). Plain SQL (``portal.sql``, prepared on PostgreSQL), as building these reads
    through the ORM cost more than running them."""

    columns: tuple[str, ...] = ()

    def __init__(self, expected: slice | None = None) -> None:
        self.expected = expected
        self._read: tuple[tuple[int, int], list[dict]] | None = None
        self._total: int | None = None

    def _page(self, start: int, size: int) -> list[list]:
        """The rows from ``start``, at most ``size``, each with the total last."""
        raise NotImplementedError

    def _count(self) -> int:
        raise NotImplementedError

    def count(self) -> int:
        if self._total is None and self.expected is not None:
            self[self.expected]
        if self._total is None:
            self._total = self._count()
        return self._total

    def __getitem__(self, page: slice) -> list[dict]:
        start, stop = page.start or 0, page.stop
        if stop <= start:
            return []
        if self._read is not None:  # the paginator cuts the last page to the count
            (read_start, read_stop), read = self._read
            if read_start == start and stop <= read_stop:
                return read[: stop - start]
        keys = (*self.columns, "total")
        found = [dict(zip(keys, row, strict=True)) for row in self._page(start, stop - start)]
        if found:
            self._total = found[0]["total"]
        elif start == 0:
            self._total = 0
        self._read = ((start, stop), found)
        return found


class TableRows(_CountedRows):
    """The organisation's instances (those in ``states``, if given) as the instances page's
    table reads them: dicts of ``TABLE_COLUMNS`` newest first (the model's ordering), each with
    ``total``, how many there are in all."""

    columns = TABLE_COLUMNS

    def __init__(
        self, organization, states: Sequence[str] | None = None, expected: slice | None = None
    ) -> None:
        super().__init__(expected)
        self.organization_id = organization.pk
        self.states = tuple(states or ())

    def _count(self) -> int:
        instances = instances_table(self.organization_id)
        return (instances.filter(state__in=self.states) if self.states else instances).count()

    def _page(self, start: int, size: int) -> list[list]:
        org, states = self.organization_id, self.states
        params = [org, *states, org, *states, size, start]
        return rows(_table_sql(len(states)), params, _TABLE_FIELDS)


# A page of the table, with the count (an uncorrelated subquery, run once) on every row.
_TABLE_SQL = """
SELECT i.id, i.name, i.state, i.ip_address, i.created_at, i.ssh_user, i.ssh_port, i.release_at,
    t.name, r.code,
    (SELECT COUNT(*) FROM compute_instance c WHERE c.organization_id = %s{keep_c})
FROM compute_instance i
JOIN catalog_instancetype t ON t.id = i.instance_type_id
JOIN catalog_region r ON r.id = i.region_id
WHERE i.organization_id = %s{keep_i}
ORDER BY i.created_at DESC, i.id DESC
LIMIT %s OFFSET %s
"""
_TABLE_FIELDS = (
    *(Instance._meta.get_field(name) for name in TABLE_COLUMNS[:8]),
    InstanceType._meta.get_field("name"),
    Region._meta.get_field("code"),
)


@cache
def _table_sql(states: int) -> str:
    """``_TABLE_SQL`` keeping ``states`` states (none: all), one constant statement each."""
    keep = f" AND {{alias}}.state IN ({placeholders(range(states))})" if states else ""
    return _TABLE_SQL.format(keep_c=keep.format(alias="c"), keep_i=keep.format(alias="i"))


def table_row_of(instance: Instance) -> dict:
    """One instance as ``TableRows`` reads it (without ``total``)."""
    return {column: attrgetter(column.replace("__", "."))(instance) for column in TABLE_COLUMNS}


def instance_list_values(instances: QuerySet[Instance]) -> QuerySet[dict]:
    """``instances`` (from ``instances_list``, filtered) as dicts of what
    ``GET /api/v1/instances`` shows, keyed by ``API_COLUMNS``: one query, no model instances."""
    return instances.values(*API_COLUMNS)


class ApiRows(_CountedRows):
    """All the organisation's instances as ``GET /api/v1/instances`` reads them when it is not
    filtered: dicts of ``API_COLUMNS`` newest first (the model's ordering), each with
    ``total``."""

    columns = API_COLUMNS

    def __init__(self, organization, expected: slice | None = None) -> None:
        super().__init__(expected)
        self.organization_id = organization.pk

    def _count(self) -> int:
        return instances_table(self.organization_id).count()

    def _page(self, start: int, size: int) -> list[list]:
        params = [self.organization_id, self.organization_id, size, start]
        return rows(_API_SQL, params, _API_FIELDS)


_API_SQL = """
SELECT i.id, i.name, i.state, i.desired_state, i.observed_state, i.status_message,
    i.ip_address, i.disk_gb, i.created_at, i.running_since, i.terminated_at,
    i.ssh_user, i.ssh_port, i.idle_stop_enabled, i.idle_stop_threshold_pct, i.idle_stop_minutes,
    i.scheduled_stop_at, i.release_at, i.gpus, i.backend, t.name, r.code, m.name,
    (SELECT COUNT(*) FROM compute_instance c WHERE c.organization_id = %s)
FROM compute_instance i
JOIN catalog_instancetype t ON t.id = i.instance_type_id
JOIN catalog_region r ON r.id = i.region_id
JOIN catalog_image m ON m.id = i.image_id
WHERE i.organization_id = %s
ORDER BY i.created_at DESC, i.id DESC
LIMIT %s OFFSET %s
"""
_API_FIELDS = (
    *(Instance._meta.get_field(name) for name in API_COLUMNS[:20]),
    InstanceType._meta.get_field("name"),
    Region._meta.get_field("code"),
    Image._meta.get_field("name"),
)


def instance_get(organization, instance_id: int) -> Instance:
    instance = instances_list(organization).filter(pk=instance_id).first()
    if instance is None:
        raise NotFound(_("No such instance in this organisation."))
    return instance


def instance_events(instance: Instance) -> QuerySet[InstanceEvent]:
    return InstanceEvent.objects.filter(instance=instance).order_by("created_at", "id")


def organization_footprint(organization) -> tuple[int, int]:
    """How many live instances and volumes an organisation still has."""
    from portal.compute.lifecycle import LIVE, State

    live = Instance.objects.filter(
        organization=organization, state__in=[s.value for s in LIVE | {State.TERMINATING}]
    ).count()
    return live, volumes_list(organization).count()


def organization_holdings(organization) -> dict[str, int]:
    """The accounts hook refusing to delete an organisation that still has instances or
    volumes (settings.ACCOUNTS_ORGANIZATION_DELETE_CHECKS)."""
    live_instances, volumes = organization_footprint(organization)
    return {"instances": live_instances, "volumes": volumes}


def organization_resources_ever(organization) -> dict[str, int]:
    """The accounts hook fixing the currency (settings.ACCOUNTS_CURRENCY_LOCKS): every instance
    and volume the organisation ever had was priced in it."""
    return {
        "instances": Instance.objects.filter(organization=organization).count(),
        "volumes": Volume.objects.filter(organization=organization).count(),
    }


def clusters_list(organization) -> QuerySet[Cluster]:
    """The organisation's clusters with their types, regions and nodes (two queries a page)."""
    return (
        Cluster.objects.filter(organization=organization)
        .select_related("instance_type", "region")
        .prefetch_related(
            Prefetch("members", Instance.objects.select_related("host").order_by("pk"))
        )
    )


def volumes_list(organization) -> QuerySet[Volume]:
    return (
        Volume.objects.filter(organization=organization)
        .exclude(state=VolumeState.DELETED)
        .select_related("region", "instance")
    )


# --- for metering -----------------------------------------------------------------------------


def instances_in_window(start: datetime, end: datetime, organization=None) -> QuerySet[Instance]:
    """Instances that may have used something in [start, end): created before its end, not
    terminated before its start, and not a launch that had already failed."""
    instances = (
        Instance.objects.filter(created_at__lt=end)
        .filter(Q(terminated_at__isnull=True) | Q(terminated_at__gte=start))
        .exclude(state=State.FAILED, state_changed_at__lt=start)
    )
    if organization is not None:
        instances = instances.filter(organization=organization)
    return instances


def volumes_in_window(start: datetime, end: datetime, organization=None) -> QuerySet[Volume]:
    """Volumes that existed at some moment of [start, end)."""
    volumes = Volume.objects.filter(created_at__lt=end).filter(
        Q(deleted_at__isnull=True) | Q(deleted_at__gte=start)
    )
    if organization is not None:
        volumes = volumes.filter(organization=organization)
    return volumes


def instance_state_steps(
    instances: QuerySet[Instance], until: datetime
) -> dict[int, list[tuple[datetime, str, bool]]]:
    """Each instance's (moment, new state, with GPUs) steps before ``until``, in order, in one
    query. A step in no-GPU mode is one whose event says ``"gpus": false`` (``transition``
    writes it on every move of an instance started without GPUs)."""
    steps: dict[int, list[tuple[datetime, str, bool]]] = defaultdict(list)
    events = (
        InstanceEvent.objects.filter(instance__in=instances, created_at__lt=until)
        .exclude(to_state="")
        .order_by("instance_id", "created_at", "id")
        .values_list("instance_id", "created_at", "to_state", "detail__gpus")
    )
    for instance_id, moment, state, gpus in events:
        steps[instance_id].append((moment, state, gpus is not False))
    return steps


# Instances that run or are on their way to running (their GPUs are or will be billed).
RUNNING_OR_COMING = BILLED_RUNNING | COMPUTE_COMING


def instances_running(organization=None, *, coming: bool = False) -> QuerySet[Instance]:
    """Instances running now (billed per second); with ``coming``, also those on their way
    (pending, starting). Every organisation's when ``organization`` is None."""
    states = RUNNING_OR_COMING if coming else BILLED_RUNNING
    instances = Instance.objects.filter(state__in=sorted(states))
    if organization is not None:
        instances = instances.filter(organization=organization)
    return instances


# A placement: (instance type id, region id, with GPUs); without GPUs it is billed at the
# region's no-GPU price (``portal.metering.rating.Rater.per_hour``).
Placement = tuple[int, int, bool]


def running_placements(organization) -> list[Placement]:
    """(instance type id, region id, with GPUs) of each instance the organisation has running
    now."""
    return list(
        instances_running(organization).values_list("instance_type_id", "region_id", "gpus")
    )


@dataclass(frozen=True)
class Footprint:
    """What an organisation holds that is billed by the hour now or within moments: the
    (instance type id, region id, with GPUs) of every instance running or on its way to
    running, and the GB stored (boot disks kept by stopped instances, and volumes)."""

    compute: tuple[Placement, ...]
    stored_gb: int


def organization_footprint_now(organization) -> Footprint:
    """The organisation's billed footprint now, in two queries (see ``Footprint``)."""
    compute, stored_gb = [], 0
    rows = Instance.objects.filter(
        organization=organization, state__in=sorted(RUNNING_OR_COMING | DISK_KEPT)
    ).values_list("state", "instance_type_id", "region_id", "gpus", "disk_gb")
    for state, instance_type_id, region_id, gpus, disk_gb in rows:
        if state in RUNNING_OR_COMING:  # a starting instance will run: its GPUs count
            compute.append((instance_type_id, region_id, gpus))
        else:
            stored_gb += disk_gb
    volumes = (
        Volume.objects.filter(organization=organization)
        .exclude(state=VolumeState.DELETED)
        .aggregate(total=Sum("size_gb"))["total"]
    )
    return Footprint(compute=tuple(compute), stored_gb=stored_gb + (volumes or 0))


@dataclass(frozen=True)
class BilledNow:
    """What an organisation is billed for by the hour now (``running``: the placements billed
    for running time; ``billed_gb``: kept boot disks, a starting instance's among them, and
    volumes) and its committed footprint (``Footprint``), as ``FootprintChange`` counts them."""

    running: tuple[Placement, ...]
    billed_gb: int
    committed: Footprint


def organization_billed_now(organization) -> BilledNow:
    """Two queries (the instances that cost something, the volumes' size)."""
    running, committed, billed_gb, committed_gb = [], [], 0, 0
    rows = Instance.objects.filter(
        organization=organization, state__in=sorted(RUNNING_OR_COMING | DISK_KEPT)
    ).values_list("state", "instance_type_id", "region_id", "gpus", "disk_gb")
    for state, instance_type_id, region_id, gpus, disk_gb in rows:
        if state in BILLED_RUNNING:
            running.append((instance_type_id, region_id, gpus))
        if state in RUNNING_OR_COMING:
            committed.append((instance_type_id, region_id, gpus))
        elif state in DISK_KEPT:
            committed_gb += disk_gb
        if state in DISK_KEPT:
            billed_gb += disk_gb
    volumes = (
        (
            Volume.objects.filter(organization=organization)
            .exclude(state=VolumeState.DELETED)
            .aggregate(total=Sum("size_gb"))["total"]
        )
        or 0
    )
    return BilledNow(
        running=tuple(running),
        billed_gb=billed_gb + volumes,
        committed=Footprint(compute=tuple(committed), stored_gb=committed_gb + volumes),
    )
