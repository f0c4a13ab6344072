"""Taking external usage as CloudEvents 1.0 (JSON).

Each event names a meter in ``type``, what it measured in ``subject``, and a number in ``data``
(the number itself, or ``{"value": n}``); ``time`` defaults to when it arrived. It is unique on
(``source``, ``id``): a re-sent event is accepted and ignored. Invalid events are refused one by
one with a reason; the valid ones of the same batch are kept.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from portal.accounts.roles import Action
from portal.accounts.services import authorize
from portal.accounts.types import Actor
from portal.metering.models import Meter, UsageEvent

MAX_BATCH = 1000
MAX_VALUE = Decimal("1e17")


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
    return value


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
    return number.quantize(Decimal("0.000001"))


def _parse(index: int, event, meters: dict[str, Meter], now: datetime):
    def reject(code: str, reason: str) -> Rejection:
        return Rejection(
            index=index,
            id=event.get("id") if isinstance(event, dict) else None,
            code=code,
            reason=reason,
        )

    if not isinstance(event, dict):
        return reject("not_an_object", "An event is a JSON object.")
    if event.get("specversion") != "1.0":
        return reject("specversion", 'specversion must be "1.0".')
    event_id, source, meter_key, subject = (
        _text(event, "id"),
        _text(event, "source"),
        _text(event, "type", 80),
        _text(event, "subject"),
    )
    if event_id is None:
        return reject("id", "id is required (a string of at most 255 characters).")
    if source is None:
        return reject("source", "source is required (a string of at most 255 characters).")
    if meter_key is None or meter_key not in meters:
        return reject(
            "unknown_meter",
            f"type '{event.get('type')}' is not a meter you can report; ask an operator to define it.",
        )
    if subject is None:
        return reject(
            "subject", "subject is required: what the value measures (e.g. a job or endpoint id)."
        )
    moment = now
    if event.get("time") is not None:
        moment = parse_datetime(event["time"]) if isinstance(event["time"], str) else None
        if moment is None or moment.tzinfo is None:
            return reject("time", "time must be an RFC 3339 timestamp with a time zone.")
        if moment > now + timezone.timedelta(minutes=5):
            return reject("time", "time is in the future.")
    value = _value(event.get("data"))
    if value is None:
        return reject(
            "data", 'data must be a non-negative number, or an object with a numeric "value".'
        )
    return (source, event_id, meters[meter_key], subject, moment, value, event.get("data"))


def usage_events_ingest(*, actor: Actor, events: list) -> IngestResult:
    """Record a batch of CloudEvents for the actor's organisation."""
    actor = authorize(actor, Action.INSTANCE_MANAGE)
    if len(events) > MAX_BATCH:
        from portal.errors import InvalidInput

        raise InvalidInput(
            f"A batch has at most {MAX_BATCH} events; this one has {len(events)}.",
            code="batch_too_large",
        )
    meters = {m.key: m for m in Meter.objects.filter(is_active=True, built_in=False)}
    now = timezone.now()
    result = IngestResult()
    rows, seen = [], set()
    for index, event in enumerate(events):
        parsed = _parse(index, event, meters, now)
        if isinstance(parsed, Rejection):
            result.rejected.append(parsed)
            continue
        source, event_id, meter, subject, moment, value, data = parsed
        if (source, event_id) in seen:
            result.duplicates += 1
            continue
        seen.add((source, event_id))
        rows.append(
            UsageEvent(
                organization=actor.organization,
                source=source,
                event_id=event_id,
                meter=meter,
                subject=subject,
                time=moment,
                value=value,
                data=data if isinstance(data, dict) else {},
                received_at=now,
            )
        )
    with transaction.atomic():
        created = UsageEvent.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
        if rows:
            stored = UsageEvent.objects.filter(
                received_at=now, organization=actor.organization
            ).count()
        else:
            stored = 0
    del created
    result.accepted = stored
    result.duplicates += len(rows) - stored
    return result
