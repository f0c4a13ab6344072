"""How an instance's latest launch or start went, stage by stage, read from its events:

- **placing**: from the request until the backend has the machine (the host was chosen and
  its GPUs reserved with the request; the worker then creates or starts the machine there);
- **booting**: from then until the machine is reachable (its SSH answers, or cloud-init phoned
  home: the backend's readiness);
- **ready**: the moment it became ``running``, which is when billing starts.

The sync writes an event with ``detail["stage"] == "booting"`` when the backend first says the
machine is booting. A backend that answers "running" straight away has no booting stage of its
own: placing then runs until ready and booting shows no time.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from portal.compute.lifecycle import State
from portal.compute.models import InstanceEvent

BOOTING = "booting"  # the event detail's stage the sync writes
_BEGINS = (State.PENDING, State.STARTING)  # a launch, a start
_ENDS = (State.FAILED, State.STOPPED, State.TERMINATING, State.TERMINATED)  # before running


class StageKey(StrEnum):
    PLACING = "placing"
    BOOTING = "booting"
    READY = "ready"


LABELS = {
    StageKey.PLACING: gettext_lazy("Placing"),
    StageKey.BOOTING: gettext_lazy("Booting"),
    StageKey.READY: gettext_lazy("Ready"),
}


class Status(StrEnum):
    DONE = "done"
    CURRENT = "current"
    WAITING = "waiting"  # not reached yet
    FAILED = "failed"  # the launch or start ended in this stage
    SKIPPED = "skipped"  # the backend reported no such stage


STATUS_LABELS = {
    Status.DONE: gettext_lazy("done"),
    Status.CURRENT: gettext_lazy("in progress"),
    Status.WAITING: gettext_lazy("not yet"),
    Status.FAILED: gettext_lazy("did not finish"),
    Status.SKIPPED: gettext_lazy("not reported separately"),
}


@dataclass(frozen=True)
class Stage:
    key: StageKey
    status: Status
    started_at: datetime | None = None
    ended_at: datetime | None = None
    seconds: float | None = None  # how long it took (so far, while current)

    @property
    def label(self) -> str:
        return str(LABELS[self.key])

    @property
    def status_label(self) -> str:
        return str(STATUS_LABELS[self.status])

    @property
    def took(self) -> str:
        return duration(self.seconds) if self.seconds is not None else ""


@dataclass(frozen=True)
class BootStages:
    stages: tuple[Stage, ...]
    ready_at: datetime | None
    total_seconds: float | None

    @property
    def total(self) -> str:
        return duration(self.total_seconds) if self.total_seconds is not None else ""


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``, in the active language."""
    whole = max(0, round(seconds))
    if whole < 60:
        return _("%(s)d s") % {"s": whole}
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return _("%(m)d min %(s)d s") % {"m": minutes, "s": secs}
    hours, minutes = divmod(minutes, 60)
    return _("%(h)d h %(m)d min") % {"h": hours, "m": minutes}


def _between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def boot_stages(events: Sequence[InstanceEvent], now: datetime) -> BootStages | None:
    """The stages of the latest launch or start in ``events`` (in order), or None if there was
    none (an instance imported without its history)."""
    begin = next((i for i in range(len(events) - 1, -1, -1) if events[i].to_state in _BEGINS), None)
    if begin is None:
        return None
    requested = events[begin].created_at
    booting_at = ready_at = ended_at = None
    for event in events[begin + 1 :]:
        if booting_at is None and (event.detail or {}).get("stage") == BOOTING:
            booting_at = event.created_at
        if event.to_state == State.RUNNING:
            ready_at = event.created_at
            break
        if event.to_state in _ENDS:
            ended_at = event.created_at
            break
    placed_at = booting_at or ready_at
    stop = ready_at or ended_at or now  # where the stage in progress is counted to
    if placed_at is None:
        placing = Stage(
            StageKey.PLACING,
            Status.FAILED if ended_at else Status.CURRENT,
            requested,
            ended_at,
            _between(requested, stop),
        )
        stages = (
            placing,
            Stage(StageKey.BOOTING, Status.WAITING),
            Stage(StageKey.READY, Status.WAITING),
        )
        return BootStages(stages, None, None)
    placing = Stage(
        StageKey.PLACING, Status.DONE, requested, placed_at, _between(requested, placed_at)
    )
    if booting_at is None:
        booting = Stage(StageKey.BOOTING, Status.SKIPPED)
    else:
        status = Status.DONE if ready_at else Status.FAILED if ended_at else Status.CURRENT
        booting = Stage(
            StageKey.BOOTING, status, booting_at, ready_at or ended_at, _between(booting_at, stop)
        )
    if ready_at is None:
        return BootStages((placing, booting, Stage(StageKey.READY, Status.WAITING)), None, None)
    ready = Stage(StageKey.READY, Status.DONE, ready_at, ready_at)
    return BootStages((placing, booting, ready), ready_at, _between(requested, ready_at))
