"""Releasing instances that stayed stopped too long, with notices before.

A stopped instance keeps its boot disk (billed as storage) and holds no GPUs. Once it has been
stopped for ``settings.COMPUTE_RELEASE_STOPPED_AFTER`` (15 days unless configured) it is
released: terminated through the normal lifecycle, as the system. Its volumes are never
deleted by a release: they are detached to ``available`` first, even those marked
``delete_on_termination`` (that flag is for a customer's own terminate, not for ours).

When: ``Instance.release_at``, set when the instance stops after running
(``_common._stopped_clock``). A start resets it only by getting the instance running again; a
start the host refused leaves the clock where it was (no sooner than the last notice's lead).

Notices (``settings.COMPUTE_RELEASE_NOTICES``, 7 days and 1 day before unless configured) go by
email to the organisation's owners and admins and to the member who launched it, each in their
own language, and show in the instance's events. Each is sent once per stop (a
``ReleaseNotice`` row, unique per instance, stop and lead); a later stop after a start gets
fresh notices. A notice is due from ``release_at - lead``; a sweep sends the most urgent notice
that is due and not yet sent, naming the real time left, so:

- a notice whose moment passed unsent (the instance was stopped less than 7 days before its
  release, or the sweep did not run) is still sent once, late, by the next sweep;
- when several are due at once (less than a day left and neither sent), only the most urgent
  goes: two emails saying the same thing a moment apart help nobody;
- the last notice always gives at least half its lead: sent later than that, it moves the
  release to a full lead after it. So nothing is released without a notice a day before.

The sweep (``release_due``, the ``compute.release_stopped`` task every 10 minutes) is safe to
run twice: each instance is re-read under its organisation's lock (the house lock order), and
what was sent is recorded in the same transaction as the email is queued (sent after commit).
Running, starting and terminating instances are never touched.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop, ngettext

from portal.accounts.emails import Email, send_later
from portal.accounts.models import Membership, Role, User
from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.compute.lifecycle import State
from portal.compute.models import DesiredState, Instance, ReleaseNotice, Volume, VolumeState
from portal.compute.services._common import SYSTEM, dispatch, locked_instance, record_event
from portal.compute.services._common import transition as _transition

# What the events record (stored in English; pages translate them when they show them).
NOTICE_SENT = gettext_noop(
    "Release notice sent: it is released at the time shown unless it is started; its volumes "
    "are kept."
)
RELEASED = gettext_noop(
    "Released after the time a stopped instance is kept; its volumes are kept and detached."
)


@dataclass(frozen=True)
class ReleaseReport:
    notified: tuple[int, ...]
    released: tuple[int, ...]


def release_at(instance: Instance) -> datetime | None:
    """When ``instance`` is released: only a stopped instance has such a moment."""
    return instance.release_at if instance.state == State.STOPPED else None


def time_left_text(left: timedelta) -> str:
    """``left`` as a person says it, in the active language: "6 days 23 hours", "5 hours 10
    minutes", "12 minutes" (rounded down; at least a minute)."""
    minutes = max(int(left.total_seconds() // 60), 1)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = []
    if days:
        parts.append(ngettext("%(count)d day", "%(count)d days", days) % {"count": days})
    if hours:
        parts.append(ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours})
    if minutes and not days:
        parts.append(
            ngettext("%(count)d minute", "%(count)d minutes", minutes) % {"count": minutes}
        )
    return " ".join(parts)


def moment_text(moment: datetime) -> str:
    """A date and time in the active language, in the portal's time zone, with its name:
    "11 Dec 2026, 18:00 UTC" / "2026年12月11日 18:00 UTC"."""
    local = timezone.localtime(moment)
    return f"{date_format(local, 'DATETIME_FORMAT')} {local.tzname()}"


def release_due(now: datetime | None = None) -> ReleaseReport:
    """Send the notices that are due and release the stopped instances whose moment has come
    (see the module's docstring). Each instance in its own transaction."""
    now = now or timezone.now()
    leads = sorted(settings.COMPUTE_RELEASE_NOTICES)  # the most urgent first
    horizon = now + (leads[-1] if leads else timedelta(0))
    candidates = (
        Instance.objects.filter(state=State.STOPPED, release_at__lte=horizon)
        .order_by("release_at", "pk")
        .values_list("pk", flat=True)
    )
    notified, released = [], []
    for instance_id in candidates:
        with transaction.atomic(durable=True):
            instance = locked_instance(instance_id)
            if instance.state != State.STOPPED or instance.release_at is None:
                continue  # started, or terminated, meanwhile
            if _notify(instance, leads, now):
                notified.append(instance_id)
            if instance.release_at <= now:
                _release(instance)
                released.append(instance_id)
    return ReleaseReport(notified=tuple(notified), released=tuple(released))


def _notify(instance: Instance, leads: list[timedelta], now: datetime) -> bool:
    """Send the most urgent notice due for this stop, unless it was sent. Returns whether one
    was sent."""
    left = instance.release_at - now
    due = next((lead for lead in leads if left <= lead), None)
    if due is None:
        return False
    sent = ReleaseNotice.objects.filter(
        instance=instance, stopped_since=instance.stopped_since, lead__lte=due
    )
    if sent.exists():  # this one, or a more urgent one, went already
        return False
    if due == leads[0] and left < due / 2:
        # the last notice, late: the customer still gets a full lead after it
        instance.release_at = now + due
        instance.save(update_fields=["release_at"])
    recipients = notice_recipients(instance)
    ReleaseNotice.objects.create(
        instance=instance,
        stopped_since=instance.stopped_since,
        lead=due,
        release_at=instance.release_at,
        recipients=[user.email for user in recipients],
        sent_at=now,
    )
    for user in recipients:
        send_later(release_notice_email(instance=instance, user=user, now=now))
    record_event(
        instance,
        actor=SYSTEM,
        reason=NOTICE_SENT,
        detail={
            "release_at": instance.release_at.isoformat(),
            "notice_hours": due.total_seconds() / 3600,
            "recipients": len(recipients),
        },
    )
    audit_record(
        actor=Actor.system(instance.organization),
        action="instance.release_notice",
        target=instance,
        details={"release_at": instance.release_at.isoformat(), "recipients": len(recipients)},
    )
    return True


def notice_recipients(instance: Instance) -> list[User]:
    """The organisation's owners and admins, and the member who launched it (someone who has
    left the organisation hears nothing more of it)."""
    members = Membership.objects.filter(organization_id=instance.organization_id)
    users = User.objects.filter(
        pk__in=members.filter(role__in=[Role.OWNER, Role.ADMIN]).values("user_id")
    )
    if instance.created_by_id is not None:
        users = users | User.objects.filter(
            pk=instance.created_by_id, pk__in=members.values("user_id")
        )
    return list(users.filter(is_active=True).distinct().order_by("email"))


def release_notice_email(*, instance: Instance, user: User, now: datetime) -> Email:
    """The notice to ``user``, in their language (their saved choice, else the default)."""
    with translation.override(user.language or settings.LANGUAGE_CODE):
        when = moment_text(instance.release_at)
        subject = _("%(instance)s will be released on %(when)s") % {
            "instance": instance.name,
            "when": when,
        }
        body = render_to_string(
            "compute/email/release_notice.txt",
            {
                "instance": instance,
                "organization": instance.organization,
                "when": when,
                "left": time_left_text(instance.release_at - now),
                "link": settings.SITE_URL + reverse("compute:instance_detail", args=[instance.pk]),
            },
        )
    return Email(to=user.email, subject=subject, body=body)


def _release(instance: Instance) -> None:
    """Terminate a locked stopped instance as the system; its volumes stay."""
    days = (instance.release_at - instance.stopped_since).total_seconds() / 86400
    # Never deleted by a release, delete_on_termination or not: detached here, before the
    # lifecycle's terminate (whose detach would delete those so marked) finds them.
    volumes = list(
        Volume.objects.select_for_update().filter(instance=instance, state=VolumeState.IN_USE)
    )
    for volume in volumes:
        volume.state, volume.instance = VolumeState.AVAILABLE, None
        volume.save(update_fields=["state", "instance"])
    instance.desired_state = DesiredState.TERMINATED
    instance.save(update_fields=["desired_state"])
    detail = {"stopped_days": round(days, 2), "volumes_kept": [v.pk for v in volumes]}
    _transition(instance, State.TERMINATING, actor=SYSTEM, reason=RELEASED, detail=detail)
    audit_record(
        actor=Actor.system(instance.organization),
        action="instance.release",
        target=instance,
        details=detail,
    )
    dispatch(instance)
