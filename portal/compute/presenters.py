"""The instances table's rows as HTML, written in Python, and its pagination links.

A row through the template language (a ``{% partial %}`` per row, a variable lookup and an
escape per cell, two ``reverse`` calls) cost more than the page's query, so the rows of a page
are formatted here from the plain values of ``selectors.TableRows``: what every row shares
(its URLs, state labels, the time zone, the moment ages are counted to, the ages of rows
created in the same minute) is worked out once a page, and every value goes through
``html.escape`` (what Django's ``escape`` does) on its way into the markup. The page's rows and
the row a transitional instance polls (``instance_row``) are the same function's output.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from django.core.paginator import Page
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from portal.compute.lifecycle import TRANSITIONAL, State
from portal.compute.models import Instance, ssh_command
from portal.compute.selectors import table_row_of
from portal.compute.services import moment_text, time_left_text

ROW = """
<tr id="instance-row-{pk}"{poll}>
  <td><a id="instance-link-{pk}" href="{url}">{name}</a></td>
  <td><span class="badge state state-{state}">{spinner}{state_label}</span>{release}</td>
  <td class="hide-sm"><code>{type_name}</code></td>
  <td class="hide-sm">{region_code}</td>
  <td>{address}</td>
  <td class="hide-sm nowrap"><time datetime="{created_iso}" title="{created_title}">{age}</time></td>
</tr>
"""
POLL = ' hx-get="{poll_url}" hx-trigger="{poll_trigger}" hx-swap="outerHTML"'
SPINNER = '<span class="spinner" aria-hidden="true"></span>'
ADDRESS = """
    <div class="mono">{ip_address}</div>
    <div class="copy-line"><code id="ssh-{pk}">{ssh_command}</code>
      <button id="copy-ssh-{pk}" class="btn small secondary" type="button" data-copy="ssh-{pk}" aria-label="{copy_aria}">{copy}</button></div>
  """
NO_ADDRESS = '<span class="muted">—</span>'
RELEASE = '<span class="small release-in{urgent}" title="{title}">{text}</span>'
PK_SLOT = "2147483647"  # the pk the URLs are reversed with, replaced by each row's own
# Under four weeks an age has no months, so it depends on its whole minutes alone.
MINUTE, NO_MONTHS = timedelta(minutes=1), timedelta(days=28)


class RowContext:
    """What the rows of a page share, worked out once: their two URLs (reversed with
    ``PK_SLOT`` for the pk, and escaped), how a polling row polls, the time zone, and the moment
    ages are counted to."""

    def __init__(self, poll_trigger: str) -> None:
        self.detail_url = escape(reverse("compute:instance_detail", args=[PK_SLOT]))
        self.poll_url = escape(reverse("compute:instance_row", args=[PK_SLOT]))
        self.poll_trigger = escape(poll_trigger)
        self.state_labels = {state: escape(str(label)) for state, label in State.choices}
        self.copy_label = escape(_("Copy"))
        self.zone = timezone.get_current_timezone()
        self.now = timezone.now()
        self._ages: dict[int, str] = {}

    def age(self, created: datetime) -> str:
        """``timesince(created)``, worked out once for the rows of a page created in the same
        minute (instances launched together)."""
        since = self.now - created
        if since >= NO_MONTHS:
            return timesince(created, self.now)
        minutes = since // MINUTE
        if minutes not in self._ages:
            self._ages[minutes] = timesince(created, self.now)
        return self._ages[minutes]


def _row_markup(row: dict, page: RowContext) -> str:
    """One ``<tr>`` of the instances table for ``row`` (a dict of ``selectors.TableRows``), every
    value escaped. A transitional instance's row polls its own URL with a spinner in its badge;
    a running one with an address shows the SSH command and a button to copy it."""
    pk = str(row["id"])  # an integer: nothing to escape
    state, name = row["state"], escape(row["name"])
    created = row["created_at"].astimezone(page.zone)  # what timezone.localtime does
    iso = created.isoformat()  # the date filter's "c": digits and separators, nothing to escape
    poll = ""
    if state in TRANSITIONAL:
        poll_url = page.poll_url.replace(PK_SLOT, pk)
        poll = POLL.format(poll_url=poll_url, poll_trigger=page.poll_trigger)
    address = NO_ADDRESS
    if command := ssh_command(row["ip_address"], state, row["ssh_user"], row["ssh_port"]):
        ip_address, command = escape(row["ip_address"]), escape(command)
        address = ADDRESS.format(
            pk=pk,
            ip_address=ip_address,
            ssh_command=command,
            copy=page.copy_label,
            copy_aria=escape(_("Copy the SSH command for %(name)s") % {"name": row["name"]}),
        )
    release = ""
    if state == State.STOPPED and row["release_at"] is not None:
        left = row["release_at"] - page.now
        release = RELEASE.format(
            urgent=" urgent" if left <= URGENT else " muted",
            title=escape(moment_text(row["release_at"])),
            text=escape(
                _("Released in %(left)s") % {"left": short_left(left)}
                if left > timedelta(0)
                else _("Release due")  # the next sweep releases it
            ),
        )
    return ROW.format(
        pk=pk,
        poll=poll,
        release=release,
        url=page.detail_url.replace(PK_SLOT, pk),
        name=name,
        state=escape(state),
        spinner=SPINNER if poll else "",
        state_label=page.state_labels.get(state) or escape(state),
        type_name=escape(row["instance_type__name"]),
        region_code=escape(row["region__code"]),
        address=address,
        created_iso=iso,
        created_title=f"{iso[:10]} {iso[11:16]} {escape(created.tzname() or '')}",  # "Y-m-d H:i e"
        age=escape(page.age(row["created_at"])),
    )


def rows_html(rows: Iterable[dict], poll_trigger: str) -> SafeString:
    """The rows of a page of the instances table, in order, as one piece of markup."""
    page = RowContext(poll_trigger)
    markup = "".join(_row_markup(row, page) for row in rows)
    return mark_safe(markup)  # noqa: S308  # nosec B308 B703 # each value escaped in _row_markup


@dataclass(frozen=True)
class ReleaseCountdown:
    """What a stopped instance's page and row say about its release: the time left and the
    moment, in the active language; ``urgent`` when a day or less is left."""

    at: datetime
    left: str
    when: str
    urgent: bool
    due: bool  # its moment has come: the next sweep releases it


def release_countdown(release_at: datetime | None, now: datetime) -> ReleaseCountdown | None:
    if release_at is None:
        return None
    left = release_at - now
    return ReleaseCountdown(
        at=release_at,
        left=time_left_text(left),
        when=moment_text(release_at),
        urgent=left <= URGENT,
        due=left <= timedelta(0),
    )


URGENT = timedelta(days=1)


def short_left(left: timedelta) -> str:
    """``left`` in its largest unit, rounded down, for a table cell: "6 days", "23 hours"."""
    minutes = max(int(left.total_seconds() // 60), 1)
    if minutes >= 24 * 60:
        days = minutes // (24 * 60)
        return ngettext("%(count)d day", "%(count)d days", days) % {"count": days}
    if minutes >= 60:
        hours = minutes // 60
        return ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours}
    return ngettext("%(count)d minute", "%(count)d minutes", minutes) % {"count": minutes}


def page_links(page: Page, params: str) -> dict[str, str]:
    """The query strings of the pages before and after ``page`` (empty if none), with the
    filter's ``params``."""
    prefix = f"?{params}&" if params else "?"
    return {
        "previous": f"{prefix}page={page.previous_page_number()}" if page.has_previous() else "",
        "next": f"{prefix}page={page.next_page_number()}" if page.has_next() else "",
    }


def instance_row_html(instance: Instance, poll_trigger: str) -> SafeString:
    """The one row a transitional instance polls."""
    return rows_html([table_row_of(instance)], poll_trigger)
