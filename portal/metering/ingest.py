"""Taking external usage as CloudEvents 1.0 (JSON).

Each event names a meter in ``type``, what it measured in ``subject``, and a number in ``data``
(the number itself, or ``{"value": n}``). ``subject`` is optional, as in CloudEvents 1.0: an
event without one is attributed to its ``source``. ``time`` is an RFC 3339 timestamp and
defaults to when the event arrived. It is unique on
(``source``, ``id``): a re-sent event is accepted and ignored. Invalid events are refused one by
one with a reason; the valid ones of the same batch are kept.

A batch is written with one statement: on PostgreSQL an ``INSERT ... SELECT FROM
jsonb_array_elements(...) ON CONFLICT DO NOTHING`` whose row count is exactly the events that
were new (no model instances, no second query); elsewhere (SQLite) one ``executemany`` of the
backend's insert-ignoring-conflicts, whose summed row count is the same. Strings PostgreSQL cannot store (NUL characters, lone
surrogates) are refused with the event, so one such event cannot fail its whole batch.
"""

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.db import connections, router, transaction
from django.db.models.constants import OnConflict
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _

from portal.accounts.roles import Action
from portal.accounts.services import authorize
from portal.accounts.types import Actor
from portal.metering.errors import EventRefusal, MeteringErrorCode
from portal.metering.models import Meter, UsageEvent
from portal.metering.services import closed_until

MAX_BATCH = 1000
MAX_VALUE = Decimal("1e17")
FUTURE_TOLERANCE = timedelta(minutes=5)
MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class Rejection:
    index: int
    id: str | None
    code: str
    reason: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)


def _text(event: dict, key: str, limit: int = 255) -> str | None:
    value = event.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    if not value.isascii() and not _storable(value):
        return None
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        return None
    return value


def _storable(text: str) -> bool:
    """Encodes as UTF-8 (JSON may carry lone surrogates, which no database column takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _value(data) -> Decimal | None:
    if isinstance(data, dict):
        data = data.get("value")
    if isinstance(data, bool) or not isinstance(data, (int, float, str)):
        return None
    try:
        number = Decimal(str(data))
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number) >= MAX_VALUE or number < 0:
        return None
    return number.quantize(MICRO)


def _json_ok(node) -> bool:
    """JSON any database column takes: no NUL character or lone surrogate in a string (which
    PostgreSQL refuses), only JSON types, finite numbers."""
    if isinstance(node, str):
        return "\x00" not in node and (node.isascii() or _storable(node))
    if isinstance(node, dict):
        return all(_json_ok(k) and _json_ok(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_json_ok(item) for item in node)
    if isinstance(node, float):
        return math.isfinite(node)
    return node is None or isinstance(node, (bool, int))


def _data(data) -> dict | None:
    """What is stored of ``data``: the object itself, or ``{}`` for a bare number."""
    if not isinstance(data, dict):
        return {}
    if len(data) == 1 and "value" in data:  # the usual shape; _value checked the number
        return data
    return data if _json_ok(data) else None


# RFC 3339 section 5.6 ``date-time``: full date, ``T``, full time with an optional fraction, and
# ``Z`` or a numeric offset; ``T`` and ``Z`` may be lowercase (section 5.6's note). ISO 8601's
# other forms (week dates, ordinal dates, the basic format without separators) are not RFC 3339.
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _moment(raw) -> datetime | None:
    """An aware datetime, from an RFC 3339 timestamp, that PostgreSQL and Python can both hold."""
    if not isinstance(raw, str) or not RFC3339.fullmatch(raw):
        return None
    try:
        moment = parse_datetime(raw.upper())
    except ValueError:  # well formed but not a date, e.g. 2026-02-30
        return None
    if moment is None or moment.tzinfo is None:
        return None
    if moment.year == 1:
        try:
            moment.astimezone(UTC)
        except OverflowError:  # before year 1 in UTC: could be stored, never read back
            return None
    return moment


def _quoted(value, limit: int) -> str:
    """A value of the event as it can be quoted back in the answer: text that encodes as UTF-8
    (a lone surrogate would make the answer itself fail), at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _echo_id(event) -> str | int | float | None:
    value = event.get("id") if isinstance(event, dict) else None
    if value is None or isinstance(value, (int, float)):
        return value
    return _quoted(value, 255)


def _parse(index: int, event, meters: dict[str, Meter], now: datetime, open_from: datetime | None):
    def reject(code: str, reason: str) -> Rejection:
        return Rejection(index=index, id=_echo_id(event), code=code, reason=reason)

    if not isinstance(event, dict):
        return reject(EventRefusal.NOT_AN_OBJECT, "An event is a JSON object.")
    if event.get("specversion") != "1.0":
        return reject(EventRefusal.SPECVERSION, 'specversion must be "1.0".')
    event_id, source, meter_key, subject = (
        _text(event, "id"),
        _text(event, "source"),
        _text(event, "type", 80),
        _text(event, "subject"),
    )
    if event_id is None:
        return reject(EventRefusal.ID, "id is required (a string of at most 255 characters).")
    if source is None:
        return reject(
            EventRefusal.SOURCE, "source is required (a string of at most 255 characters)."
        )
    if meter_key is None or meter_key not in meters:
        return reject(
            EventRefusal.UNKNOWN_METER,
            f"type '{_quoted(event.get('type'), 80)}' is not a meter you can report; ask an "
            "operator to define it.",
        )
    if event.get("subject") is None:
        subject = source  # optional in CloudEvents 1.0: the source itself is what was measured
    elif subject is None:
        return reject(
            EventRefusal.SUBJECT,
            "subject, when given, is a string of at most 255 characters naming what the value "
            "measures (e.g. a job or endpoint id).",
        )
    moment = now
    if event.get("time") is not None:
        moment = _moment(event["time"])
        if moment is None:
            return reject(EventRefusal.TIME, "time must be an RFC 3339 timestamp with a time zone.")
        if moment > now + FUTURE_TOLERANCE:
            return reject(EventRefusal.TIME, "time is in the future.")

    data = event.get("data")
    value = _value(data)
    stored = _data(data) if value is not None else None
    if stored is None:
        return reject(
            EventRefusal.DATA,
            'data must be a non-negative number, or an object with a numeric "value".',
        )
    return (source, event_id, meters[meter_key], subject, moment, value, stored)


def usage_events_ingest(*, actor: Actor, events: list) -> IngestResult:
    """Record a batch of CloudEvents for the actor's organisation."""
    actor = authorize(actor, Action.INSTANCE_MANAGE)
    if len(events) > MAX_BATCH:
        from portal.errors import InvalidInput

        raise InvalidInput(
            _("A batch has at most %(max)s events; this one has %(count)s.")
            % {"max": MAX_BATCH, "count": len(events)},
            code=MeteringErrorCode.BATCH_TOO_LARGE,
        )
    meters = {m.key: m for m in Meter.objects.filter(is_active=True, built_in=False)}
    now = timezone.now()
    open_from = closed_until()
    result = IngestResult()
    rows, seen = [], set()
    late: list[tuple[int, tuple]] = []
    for index, event in enumerate(events):
        parsed = _parse(index, event, meters, now, open_from)
        if isinstance(parsed, Rejection):
            result.rejected.append(parsed)
            continue
        if open_from is not None and parsed[4] < open_from:
            late.append((index, parsed))
            continue
        key = (parsed[0], parsed[1])
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        rows.append(parsed)
    if late:
        # An event of an hour already closed for billing: a re-sent one is a duplicate as
        # usual; a new one is refused, since closed hours are never re-opened.
        known = set(
            UsageEvent.objects.filter(
                organization=actor.organization,
                source__in={p[0] for _, p in late},
                event_id__in={p[1] for _, p in late},
            ).values_list("source", "event_id")
        )
        for index, parsed in late:
            if (parsed[0], parsed[1]) in known:
                result.duplicates += 1
            else:
                result.rejected.append(
                    Rejection(
                        index=index,
                        id=_echo_id(events[index]),
                        code=EventRefusal.TIME_CLOSED,
                        reason=(
                            f"time is in an hour already closed for billing (before "
                            f"{open_from:%Y-%m-%d %H:%M} UTC); report usage within minutes of its hour."
                        ),
                    )
                )
    stored = _store(actor.organization.pk, rows, now) if rows else 0
    result.accepted = stored
    result.duplicates += len(rows) - stored
    return result


# --- writing ----------------------------------------------------------------------------------


_COLUMNS = [
    "organization",
    "source",
    "event_id",
    "meter",
    "subject",
    "time",
    "value",
    "data",
    "received_at",
]


def _insert_sql(connection) -> str:
    """One INSERT of a JSON array of rows, in their order (so ids, which break ties between
    events of the same time, follow the batch), skipping (source, id) already stored.

    Sending the rows as one JSON document is cheaper on both sides than one array parameter
    per column: one ``json.dumps`` here, one JSON parse there.
    """
    opts = UsageEvent._meta
    quote = connection.ops.quote_name
    columns = ", ".join(quote(opts.get_field(name).column) for name in _COLUMNS)
    return " ".join(
        [
            f"INSERT INTO {quote(opts.db_table)} ({columns})",
            "SELECT %s, e->>0, e->>1, (e->>2)::bigint, e->>3, (e->>4)::timestamptz,",
            "(e->>5)::numeric, e->6, %s",
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n) ORDER BY n",
            "ON CONFLICT DO NOTHING",
        ]
    )


def _store(organization_id: int, rows: list[tuple], now: datetime) -> int:
    """Insert the parsed rows, skipping (source, id) already stored; how many were new."""
    connection = connections[router.db_for_write(UsageEvent)]
    store = _store_postgresql if connection.vendor == "postgresql" else _store_generic
    return store(connection, organization_id, rows, now)


def _store_postgresql(connection, organization_id: int, rows: list[tuple], now: datetime) -> int:
    payload = json.dumps(
        [
            [source, event_id, meter.pk, subject, moment.isoformat(), str(value), data]
            for source, event_id, meter, subject, moment, value, data in rows
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection), [organization_id, now, payload])
        return cursor.rowcount


def _store_generic(connection, organization_id: int, rows: list[tuple], now: datetime) -> int:
    """Any backend (SQLite in development): one executemany of INSERT-ignoring-conflicts, whose
    summed row count is the events that were new."""
    opts = UsageEvent._meta
    fields = [opts.get_field(name) for name in _COLUMNS]
    quote = connection.ops.quote_name
    sql = " ".join(
        [
            connection.ops.insert_statement(on_conflict=OnConflict.IGNORE),
            quote(opts.db_table),
            f"({', '.join(quote(f.column) for f in fields)})",
            f"VALUES ({', '.join(['%s'] * len(fields))})",
            connection.ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None),
        ]
    )
    prepare = [f.get_db_prep_save for f in fields]
    params = [
        [
            prep(value, connection)
            for prep, value in zip(
                prepare,
                (organization_id, source, event_id, meter.pk, subject, moment, value, data, now),
                strict=True,
            )
        ]
        for source, event_id, meter, subject, moment, value, data in rows
    ]
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount
