"""Instances that stop by themselves: when their GPUs sit idle (opt-in), and at a scheduled time.

Settings (``Instance.idle_stop_*`` and ``scheduled_stop_at``) are given at launch
(``LaunchRequest``) or later with ``instance_stop_settings_set``; ``stop_settings_errors``
checks them for both, so a bad value is a 400 ``invalid`` with a message per field and
nothing is written.

``idle_watch`` is the periodic sweep (``compute.idle_watch``, every minute):

- a running instance whose scheduled stop time has come is stopped ("Scheduled shutdown") and
  the schedule cleared (it is one-shot); one that is stopped, stopping or gone by then has its
  schedule cleared without more;
- a running instance with idle stop on is stopped when it is idle (``idle_verdict``): its GPUs'
  samples (``metering.GpuSample``, sent by the hosts' NVML agent) cover the whole window of the
  last N minutes and every one of them is below the threshold, on every GPU it holds.

It never stops on missing data: no samples, a gap at the start of the window (or anywhere in
it, longer than ``settings.COMPUTE_IDLE_SAMPLE_GAP_SECONDS``; the samples are metering's,
read through ``settings.COMPUTE_GPU_WINDOW_READER``), a reading without utilisation,
or an instance running for less than N minutes (one started again after an idle stop is judged
only on samples after its start) all mean "not idle". A MIG slice shares its physical GPU with
other slices and NVML reports utilisation per GPU (if at all in MIG mode), so a slice is judged
by its GPU's readings: it is idle only when the whole GPU is.

A stop goes through the customer's stop path (``action_in_transaction``) as the system actor,
with its reason stored in English (translated when shown), an audit row, an ``InstanceEvent``,
and an email to whoever launched it and the organisation's owners and admins, each in their
language, sent after commit. A rerun finds the instance stopping and does nothing: nothing is
stopped twice and no second notice goes out.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from portal.accounts.emails import Email, send_later
from portal.accounts.models import Role, User
from portal.accounts.roles import Action as RoleAction
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog.models import Gpu
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import FINAL, State
from portal.compute.models import IDLE_MINUTES, IDLE_THRESHOLD_PCT, Instance
from portal.compute.services._common import SYSTEM, locked_instance, record_event
from portal.compute.services.actions import action_in_transaction
from portal.compute.types import GpuWindowReader
from portal.errors import Conflict, InvalidInput

log = logging.getLogger(__name__)

# Event reasons, stored in English and translated when shown (``InstanceEvent.shown_reason``).
IDLE_REASON = gettext_noop("Stopped after %(minutes)s minutes idle (GPUs below %(threshold)s%%)")
SCHEDULED_REASON = gettext_noop("Scheduled shutdown")
SCHEDULE_PASSED = gettext_noop("Scheduled shutdown time passed while it was not running")
SETTINGS_CHANGED = gettext_noop("Automatic stop settings changed")

FIELDS = ("idle_stop_enabled", "idle_stop_threshold_pct", "idle_stop_minutes", "scheduled_stop_at")
# Where a scheduled stop time is already moot: the instance is off or on its way off.
OFF = frozenset({State.STOPPING, State.STOPPED, State.TERMINATING, *FINAL})


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a setting the caller leaves as it is


def stop_settings_errors(values: dict[str, Any], *, now: datetime | None = None) -> dict[str, str]:
    """Per field, what is wrong with these stop settings (only the keys given are checked)."""
    now = now or timezone.now()
    errors: dict[str, str] = {}
    if "idle_stop_enabled" in values and not isinstance(values["idle_stop_enabled"], bool):
        errors["idle_stop_enabled"] = _("Say true or false.")
    for name, (low, _default, high), message in (
        (
            "idle_stop_threshold_pct",
            IDLE_THRESHOLD_PCT,
            _("The threshold is a whole percentage from %(low)s to %(high)s."),
        ),
        (
            "idle_stop_minutes",
            IDLE_MINUTES,
            _("The idle time is a whole number of minutes from %(low)s to %(high)s."),
        ),
    ):
        if name in values:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                errors[name] = message % {"low": low, "high": high}
    if values.get("scheduled_stop_at") is not None:
        when = values["scheduled_stop_at"]
        if not isinstance(when, datetime) or timezone.is_naive(when):
            errors["scheduled_stop_at"] = _("Give a date and time with a time zone.")
        elif when <= now:
            errors["scheduled_stop_at"] = _("The scheduled stop time must be in the future.")
    return errors


def check_stop_settings(values: dict[str, Any]) -> None:
    if errors := stop_settings_errors(values):
        raise InvalidInput(
            _("The automatic stop settings are not valid; see details."),
            code=ComputeErrorCode.INVALID,
            details=errors,
        )


@transaction.atomic(durable=True)
def instance_stop_settings_set(
    *,
    actor: Actor,
    instance_id: int,
    idle_stop_enabled: bool = UNSET,
    idle_stop_threshold_pct: int = UNSET,
    idle_stop_minutes: int = UNSET,
    scheduled_stop_at: datetime | None = UNSET,
) -> Instance:
    """Change an instance's automatic stop settings (the ones given; None clears the scheduled
    stop). Same role as managing instances; a terminated or failed one cannot change."""
    given = {
        "idle_stop_enabled": idle_stop_enabled,
        "idle_stop_threshold_pct": idle_stop_threshold_pct,
        "idle_stop_minutes": idle_stop_minutes,
        "scheduled_stop_at": scheduled_stop_at,
    }
    values = {name: value for name, value in given.items() if value is not UNSET}
    check_stop_settings(values)
    actor = authorize(actor, RoleAction.INSTANCE_MANAGE, lock=True)
    instance = locked_instance(instance_id, actor.organization)
    if instance.state in FINAL:
        raise Conflict(
            _("This instance is %(state)s; it has nothing left to stop.")
            % {"state": instance.get_state_display().lower()},
            code=ComputeErrorCode.INVALID_TRANSITION,
            details={"state": instance.state},
        )
    changed = {name: value for name, value in values.items() if getattr(instance, name) != value}
    if not changed:
        return instance
    before = {name: _plain(getattr(instance, name)) for name in changed}
    for name, value in changed.items():
        setattr(instance, name, value)
    instance.save(update_fields=list(changed))
    after = {name: _plain(value) for name, value in changed.items()}
    record_event(
        instance, actor=actor.label, reason=SETTINGS_CHANGED, detail={"from": before, "to": after}
    )
    audit_record(
        actor=actor,
        action="instance.stop_settings",
        target=instance,
        details={"from": before, "to": after},
    )
    return instance


def _plain(value):
    return value.isoformat() if isinstance(value, datetime) else value


# --- is it idle? ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleVerdict:
    idle: bool
    why: str  # for logs and tests: "idle", "busy", "no_gpus", "not_running_long_enough", ...
    window_start: datetime | None = None
    peaks: dict[int, int | None] = field(default_factory=dict)  # GPU id -> highest reading


def gpu_ids_of(instance: Instance) -> list[int]:
    """The physical GPUs the instance holds now: its allocation's ``gpu_slots`` name their
    UUIDs. A MIG slice names the GPU it is cut from, which is the GPU whose readings judge it."""
    if instance.allocation is None:
        return []
    uuids = sorted({slot.get("gpu") for slot in instance.allocation.gpu_slots if slot.get("gpu")})
    return list(Gpu.objects.filter(uuid__in=uuids).values_list("pk", flat=True))


def idle_verdict(instance: Instance, now: datetime | None = None) -> IdleVerdict:
    """Whether the instance's GPUs stayed below its threshold for its whole idle window.

    Missing data is never idle: the window must lie inside its current running period and be
    covered by samples on every GPU, with no stretch of ``COMPUTE_IDLE_SAMPLE_GAP_SECONDS``
    without one (the window is cut into buckets that long, and every bucket needs a sample:
    a gap at its start fails the first), and every sample must carry a utilisation reading
    (NVML gives none in MIG mode). The samples are metering's, read through
    ``settings.COMPUTE_GPU_WINDOW_READER``."""
    now = now or timezone.now()
    start = now - timedelta(minutes=instance.idle_stop_minutes)
    if instance.state != State.RUNNING or instance.running_since is None:
        return IdleVerdict(False, "not_running")
    if instance.running_since > start:  # judged only on samples since it last started
        return IdleVerdict(False, "not_running_long_enough", start)
    gpu_ids = gpu_ids_of(instance)
    if not gpu_ids:
        return IdleVerdict(False, "no_gpus", start)
    reader: GpuWindowReader = import_string(settings.COMPUTE_GPU_WINDOW_READER)
    windows = reader(
        gpu_ids=gpu_ids,
        start=start,
        end=now,
        bucket_seconds=settings.COMPUTE_IDLE_SAMPLE_GAP_SECONDS,
    )
    peaks = {
        gpu_id: windows[gpu_id].peak_utilization_pct if gpu_id in windows else None
        for gpu_id in gpu_ids
    }
    for gpu_id in gpu_ids:
        window = windows.get(gpu_id)
        if window is None or not window.samples:
            return IdleVerdict(False, "no_samples", start, peaks)
        if window.readings < window.samples:
            return IdleVerdict(False, "missing_readings", start, peaks)
        if window.covered < window.buckets:
            return IdleVerdict(False, "gap", start, peaks)
        if window.peak_utilization_pct >= instance.idle_stop_threshold_pct:
            return IdleVerdict(False, "busy", start, peaks)
    return IdleVerdict(True, "idle", start, peaks)


# --- the sweep --------------------------------------------------------------------------------


@dataclass
class IdleWatchReport:
    stopped_idle: list[int] = field(default_factory=list)
    stopped_scheduled: list[int] = field(default_factory=list)
    schedules_cleared: list[int] = field(default_factory=list)


def idle_watch(now: datetime | None = None) -> IdleWatchReport:
    """The periodic sweep (see the module docstring). Safe to run twice and concurrently: an
    instance that looks due is decided again under its organisation's lock (the house lock
    order), and one that is stopping or stopped by then is left alone."""
    now = now or timezone.now()
    report = IdleWatchReport()
    scheduled = Q(scheduled_stop_at__lte=now)
    due = Instance.objects.filter(Q(state=State.RUNNING, idle_stop_enabled=True) | scheduled)
    for instance in due.select_related("allocation").order_by("pk"):
        instance_id = instance.pk
        try:
            # judged first without a lock, so the organisation is locked only for a stop
            if not _is_scheduled(instance, now) and not idle_verdict(instance, now).idle:
                continue
            outcome = _watch_one(instance_id, now)
        except Exception:  # one instance must not stop the watch for the others
            log.exception("idle watch failed for instance %s", instance_id)
            continue
        if outcome == "idle":
            report.stopped_idle.append(instance_id)
        elif outcome == "scheduled":
            report.stopped_scheduled.append(instance_id)
        elif outcome == "cleared":
            report.schedules_cleared.append(instance_id)
    return report


@transaction.atomic(durable=True)
def _watch_one(instance_id: int, now: datetime) -> str:
    """Decide one instance under its organisation's lock: "idle", "scheduled", "cleared" or ""."""
    instance = locked_instance(instance_id)  # the organisation's lock, then the instance's
    scheduled = _is_scheduled(instance, now)
    if scheduled and instance.state in OFF:
        instance.scheduled_stop_at = None
        instance.save(update_fields=["scheduled_stop_at"])
        record_event(instance, actor=SYSTEM, reason=SCHEDULE_PASSED)
        audit_record(
            actor=Actor.system(instance.organization),
            action="instance.scheduled_stop_cleared",
            target=instance,
        )
        return "cleared"
    if instance.state != State.RUNNING:
        return ""  # starting or rebooting: a scheduled stop waits until it runs
    if scheduled:
        at = instance.scheduled_stop_at
        instance.scheduled_stop_at = None
        instance.save(update_fields=["scheduled_stop_at"])
        _stop(instance, reason=SCHEDULED_REASON, detail={"scheduled_stop_at": at.isoformat()})
        _notify(instance, kind="scheduled", scheduled_at=at)
        return "scheduled"
    if not instance.idle_stop_enabled:
        return ""
    verdict = idle_verdict(instance, now)
    if not verdict.idle:
        return ""
    args = {"minutes": instance.idle_stop_minutes, "threshold": instance.idle_stop_threshold_pct}
    _stop(
        instance,
        reason=IDLE_REASON % args,
        detail={
            "reason_msgid": IDLE_REASON,
            "reason_args": args,
            "window_start": verdict.window_start.isoformat(),
            "peak_utilization_pct": max(p for p in verdict.peaks.values() if p is not None),
        },
    )
    _notify(instance, kind="idle")
    return "idle"


def _is_scheduled(instance: Instance, now: datetime) -> bool:
    return instance.scheduled_stop_at is not None and instance.scheduled_stop_at <= now


def _stop(instance: Instance, *, reason: str, detail: dict) -> None:
    """The customer's stop path, as the system actor, in this transaction."""
    action_in_transaction(
        actor=Actor.system(instance.organization),
        instance_id=instance.pk,
        action="stop",
        reason=reason,
        detail=detail,
    )


# --- the notice -------------------------------------------------------------------------------


def notice_recipients(instance: Instance) -> list[User]:
    """Who hears that an instance stopped by itself: whoever launched it (while still a member
    of the organisation) and the organisation's owners and admins, each once."""
    members = User.objects.filter(memberships__organization_id=instance.organization_id)
    wanted = Q(memberships__role__in=[Role.OWNER, Role.ADMIN])
    if instance.created_by_id is not None:
        wanted |= Q(pk=instance.created_by_id)
    users = {user.pk: user for user in members.filter(wanted)}
    return sorted((u for u in users.values() if u.email), key=lambda u: u.email.lower())


def _notify(instance: Instance, *, kind: str, scheduled_at: datetime | None = None) -> None:
    """The email to each recipient in their language, sent after commit."""
    url = f"{settings.SITE_URL}{reverse('compute:instance_detail', args=[instance.pk])}"
    for user in notice_recipients(instance):
        with translation.override(user.language or settings.LANGUAGE_CODE):
            if kind == "idle":
                subject = _("%(name)s was stopped: its GPUs were idle") % {"name": instance.name}
                what = _(
                    "%(name)s was stopped because its GPUs stayed below %(threshold)s%% for "
                    "%(minutes)s minutes, as its idle stop setting asks."
                ) % {
                    "name": instance.name,
                    "threshold": instance.idle_stop_threshold_pct,
                    "minutes": instance.idle_stop_minutes,
                }
            else:
                subject = _("%(name)s was stopped as scheduled") % {"name": instance.name}
                what = _("%(name)s was stopped at its scheduled shutdown time, %(time)s.") % {
                    "name": instance.name,
                    "time": f"{timezone.localtime(scheduled_at):%Y-%m-%d %H:%M %Z}",
                }
            body = render_to_string(
                "compute/email/instance_stopped.txt",
                {"instance": instance, "what": what, "url": url},
            )
        send_later(Email(to=user.email, subject=subject, body=body))
