"""CloudEvents ingestion through ``POST /api/v1/usage-events`` with an API key, and what closing
the hour makes of the events: one record per (subject, meter, hour) following the meter's
aggregation, whatever the order or repetition the events arrived in."""

import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from portal.metering import ingest, services
from portal.metering.models import Aggregation, Meter, UsageEvent, UsageRecord
from tests import factories

pytestmark = pytest.mark.django_db

URL = "/api/v1/usage-events"
ONE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
HOUR = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # the hour the events are in
NOW = HOUR + timedelta(minutes=58)  # when they arrive
AFTER = HOUR + timedelta(hours=1, minutes=5)  # when the hour is closed
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture(params=["native", "generic"])
def store(request, monkeypatch):
    """Each writing path: the PostgreSQL statement (the same as generic on SQLite) and the
    executemany any other backend uses."""
    if request.param == "generic":
        monkeypatch.setattr(ingest, "_store_postgresql", ingest._store_generic)
    return request.param


@pytest.fixture
def meters():
    """One operator-defined meter per aggregation."""
    return {
        Aggregation.SUM: Meter.objects.create(key="tokens.generated", name="Tokens", unit="token"),
        Aggregation.MAX: Meter.objects.create(
            key="gpu.memory_peak", name="Peak memory", unit="GB", aggregation=Aggregation.MAX
        ),
        Aggregation.COUNT: Meter.objects.create(
            key="requests.served", name="Requests", unit="request", aggregation=Aggregation.COUNT
        ),
        Aggregation.LATEST: Meter.objects.create(
            key="queue.depth", name="Queue depth", unit="job", aggregation=Aggregation.LATEST
        ),
    }


@pytest.fixture
def client(key_client, meters):
    return key_client("member")


def event(**fields) -> dict:
    return {
        "specversion": "1.0",
        "id": f"evt-{next(_ids)}",
        "source": "inference/llama",
        "type": "tokens.generated",
        "subject": "endpoint-7",
        "time": (HOUR + timedelta(minutes=5)).isoformat(),
        "data": {"value": 1234},
        **fields,
    }


def post_one(client, body):
    return client.post(URL, json.dumps(body), content_type=ONE)


def post_batch(client, events):
    return client.post(URL, json.dumps(events), content_type=BATCH)


def at(minutes: float) -> str:
    return (HOUR + timedelta(minutes=minutes)).isoformat()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


# --- accepting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value", "stored"),
    [
        ({"value": 1234}, Decimal("1234"), {"value": 1234}),
        (
            {"value": "0.25", "model": "llama-3"},
            Decimal("0.25"),
            {"value": "0.25", "model": "llama-3"},
        ),
        (12.5, Decimal("12.5"), {}),
        (0, Decimal("0"), {}),
    ],
)
def test_one_cloudevent_is_accepted_and_stored_for_the_keys_organisation(
    client, org, meters, store, data, value, stored
):
    body = event(id="evt-one", data=data)
    response = post_one(client, body)
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    (row,) = UsageEvent.objects.all()
    assert (row.organization, row.meter, row.source, row.event_id, row.subject) == (
        org,
        meters[Aggregation.SUM],
        "inference/llama",
        "evt-one",
        "endpoint-7",
    )
    assert row.time == HOUR + timedelta(minutes=5)
    assert row.value == value
    assert row.data == stored
    assert row.received_at == NOW


def test_time_defaults_to_arrival_and_values_keep_six_decimals(client, store):
    body = event(data={"value": "2.0000004"})
    del body["time"]
    assert post_one(client, body).json()["accepted"] == 1
    row = UsageEvent.objects.get()
    assert row.time == NOW
    assert row.value == Decimal("2.000000")


def test_a_time_up_to_five_minutes_ahead_is_accepted(client):
    ahead = NOW + timedelta(minutes=4, seconds=59)
    assert post_one(client, event(time=ahead.isoformat())).json()["accepted"] == 1
    assert UsageEvent.objects.get().time == ahead


@pytest.mark.parametrize(
    ("raw", "moment"),
    [
        ("2026-03-10T10:05:00Z", HOUR + timedelta(minutes=5)),
        ("2026-03-10t10:05:00z", HOUR + timedelta(minutes=5)),  # RFC 3339 5.6: t and z
        ("2026-03-10T11:05:00.25+01:00", HOUR + timedelta(minutes=5, microseconds=250000)),
        ("2026-03-10T10:05:00.123456789Z", HOUR + timedelta(minutes=5, microseconds=123456)),
        ("2026-03-10T05:35:00-04:30", HOUR + timedelta(minutes=5)),
    ],
)
def test_every_rfc_3339_form_of_time_is_accepted(client, raw, moment):
    assert post_one(client, event(time=raw)).json()["accepted"] == 1
    assert UsageEvent.objects.get().time == moment


def test_an_event_without_a_subject_is_attributed_to_its_source(client, clock):
    """subject is optional in CloudEvents 1.0, so the specification's own examples are taken."""
    body = event(id="no-subject", data=10)
    del body["subject"]
    also = event(id="null-subject", data=5, subject=None)
    response = post_batch(client, [body, also])
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert set(UsageEvent.objects.values_list("subject", flat=True)) == {"inference/llama"}
    clock.move_to(AFTER)
    services.usage_close_hour(hour_start=HOUR)
    (record,) = UsageRecord.objects.all()
    assert (record.subject_id, record.quantity) == ("inference/llama", Decimal(15))


def test_a_batch_keeps_the_valid_events_and_refuses_the_invalid_ones_one_by_one(client, store):
    events = [
        event(id="ok-0"),
        event(id="bad-1", type="no.such.meter"),
        event(id="ok-2", type="queue.depth", data=3),
        event(id="bad-3", subject=""),
        event(id="bad-4", data={"value": -1}),
        "not an event",
        event(id="ok-6", type="requests.served", time=at(30)),
    ]
    response = post_batch(client, events)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (3, 0)
    assert body["rejected"] == [
        {
            "index": 1,
            "id": "bad-1",
            "code": "unknown_meter",
            "reason": "type 'no.such.meter' is not a meter you can report; ask an operator to "
            "define it.",
        },
        {
            "index": 3,
            "id": "bad-3",
            "code": "subject",
            "reason": "subject, when given, is a string of at most 255 characters naming what "
            "the value measures (e.g. a job or endpoint id).",
        },
        {
            "index": 4,
            "id": "bad-4",
            "code": "data",
            "reason": 'data must be a non-negative number, or an object with a numeric "value".',
        },
        {"index": 5, "id": None, "code": "not_an_object", "reason": "An event is a JSON object."},
    ]
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["ok-0", "ok-2", "ok-6"]


def test_a_resent_event_is_accepted_and_ignored_also_within_one_batch(client, store):
    first = event(id="evt-a", data={"value": 10})
    assert post_one(client, first).json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    again = {**first, "data": {"value": 99}}  # same source and id: the first one stands
    assert post_one(client, again).json() == {"accepted": 0, "duplicates": 1, "rejected": []}

    b = event(id="evt-b", data={"value": 1})
    other_source = event(id="evt-a", source="inference/mistral", data={"value": 2})
    response = post_batch(client, [b, {**b, "data": {"value": 5}}, again, other_source])
    assert response.json() == {"accepted": 2, "duplicates": 2, "rejected": []}

    stored = {(e.source, e.event_id): e.value for e in UsageEvent.objects.all()}
    assert stored == {
        ("inference/llama", "evt-a"): Decimal(10),
        ("inference/llama", "evt-b"): Decimal(1),
        ("inference/mistral", "evt-a"): Decimal(2),
    }
    # A whole batch sent again is all duplicates.
    response = post_batch(client, [b, other_source, first])
    assert response.json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert UsageEvent.objects.count() == 3


def test_more_than_1000_events_are_refused_whole_and_1000_are_accepted(client, store):
    events = [event(id=f"big-{i}", subject=f"s-{i % 7}") for i in range(1001)]
    error = assert_error(post_batch(client, events), 400, "batch_too_large")
    assert "1001" in error["message"]
    assert not UsageEvent.objects.exists()
    assert post_batch(client, events[:1000]).json()["accepted"] == 1000
    assert UsageEvent.objects.count() == 1000


def test_the_query_count_does_not_grow_with_the_batch(client, store):
    def queries(n: int, tag: str) -> int:
        events = [event(id=f"{tag}-{i}") for i in range(n)]
        with factories.QueryCounter() as counted:
            assert post_batch(client, events).json()["accepted"] == n
        return counted.n

    post_batch(client, [event()])  # stamps the key's last use
    assert queries(1, "small") == queries(500, "large")


LONG = "x" * 256


@pytest.mark.parametrize(
    ("change", "code", "reason"),
    [
        pytest.param({"type": "no.such.meter"}, "unknown_meter", None, id="unknown-meter"),
        pytest.param({"type": None}, "unknown_meter", None, id="no-type"),
        pytest.param({"id": None}, "id", None, id="no-id"),
        pytest.param({"id": ""}, "id", None, id="empty-id"),
        pytest.param({"id": 42}, "id", None, id="number-id"),
        pytest.param({"id": LONG}, "id", None, id="long-id"),
        pytest.param({"id": "a\ud800b"}, "id", None, id="lone-surrogate-id"),
        pytest.param({"type": "a\ud800b"}, "unknown_meter", None, id="lone-surrogate-type"),
        pytest.param({"source": None}, "source", None, id="no-source"),
        pytest.param({"source": "   "}, "source", None, id="blank-source"),
        pytest.param({"subject": ""}, "subject", None, id="empty-subject"),
        pytest.param({"subject": 7}, "subject", None, id="number-subject"),
        pytest.param({"subject": LONG}, "subject", None, id="long-subject"),
        pytest.param({"subject": "a\x00b"}, "subject", None, id="nul-subject"),
        pytest.param({"subject": "a\ud800b"}, "subject", None, id="lone-surrogate"),
        pytest.param({"time": "yesterday"}, "time", None, id="time-words"),
        pytest.param({"time": "2026-02-30T10:00:00Z"}, "time", None, id="time-no-such-day"),
        pytest.param({"time": "2026-03-10T10:05:00"}, "time", None, id="time-no-zone"),
        pytest.param({"time": 1773136800}, "time", None, id="time-number"),
        pytest.param({"time": "2026-W11-2T10:05:00Z"}, "time", None, id="time-week-date"),
        pytest.param({"time": "2026-069T10:05:00Z"}, "time", None, id="time-ordinal-date"),
        pytest.param({"time": "20260310T100500Z"}, "time", None, id="time-basic-format"),
        pytest.param({"time": "2026-03-10T10:05Z"}, "time", None, id="time-no-seconds"),
        pytest.param({"time": "2026-03-10 10:05:00Z"}, "time", None, id="time-space"),
        pytest.param({"time": "2026-03-10T10:05:00+0100"}, "time", None, id="time-offset-basic"),
        pytest.param({"time": "2026-03-10T10:05:00+24:00"}, "time", None, id="time-offset-24h"),
        pytest.param({"time": "2026-03-10"}, "time", None, id="time-date-only"),
        pytest.param({"time": "0001-01-01T00:00:00+14:00"}, "time", None, id="time-before-1"),
        pytest.param(
            {"time": (NOW + timedelta(minutes=6)).isoformat()},
            "time",
            "time is in the future.",
            id="future",
        ),
        pytest.param({"data": -1}, "data", None, id="negative"),
        pytest.param({"data": {"value": -0.5}}, "data", None, id="negative-value"),
        pytest.param({"data": "lots"}, "data", None, id="text"),
        pytest.param({"data": {"value": "lots"}}, "data", None, id="text-value"),
        pytest.param({"data": True}, "data", None, id="boolean"),
        pytest.param({"data": None}, "data", None, id="no-data"),
        pytest.param({"data": {"count": 3}}, "data", None, id="no-value"),
        pytest.param({"data": {"value": 1e17}}, "data", None, id="too-large"),
        pytest.param({"data": {"value": 1, "note": "a\x00b"}}, "data", None, id="nul-in-data"),
        pytest.param({"specversion": "0.3"}, "specversion", None, id="specversion"),
    ],
)
def test_an_invalid_event_is_refused_with_its_code(client, change, code, reason):
    body = {k: v for k, v in event(**change).items() if v is not None}
    error = assert_error(post_one(client, body), 400, code)
    if reason:
        assert error["message"] == reason
    # In a batch, the same event is refused by index with the same code; its neighbour is kept.
    response = post_batch(client, [event(), body])
    assert response.status_code == 200
    (rejection,) = response.json()["rejected"]
    assert (rejection["index"], rejection["code"]) == (1, code)
    assert UsageEvent.objects.count() == 1


def test_what_is_quoted_back_is_always_valid_text(client):
    events = [
        event(id="a\ud800b"),
        event(id="x" * 300),
        event(id={"nested": "\ud800"}, source=None),
        event(type="tokens\ud800" + "y" * 100),
    ]
    response = post_batch(client, [{k: v for k, v in e.items() if v is not None} for e in events])
    assert response.status_code == 200
    ids = [r["id"] for r in response.json()["rejected"]]
    assert ids[0] == "a\\ud800b"
    assert ids[1] == "x" * 254 + "…"
    assert ids[2] == "{'nested': '\\ud800'}"
    reason = response.json()["rejected"][3]["reason"]
    assert reason.startswith("type 'tokens\\ud800yyy") and "…' is not a meter" in reason


def test_a_body_of_the_wrong_shape_is_refused(client):
    assert_error(client.post(URL, json.dumps(event()), content_type=BATCH), 400, "batch_invalid")
    assert_error(client.post(URL, json.dumps([event()]), content_type=ONE), 400, "event_invalid")
    assert_error(client.post(URL, "{not json", content_type=ONE), 400, "parse_error")
    assert not UsageEvent.objects.exists()


def test_built_in_and_inactive_meters_cannot_be_reported(client, meters):
    services.builtin_meters()
    for key in services.BUILT_IN_METERS:
        assert_error(post_one(client, event(type=key)), 400, "unknown_meter")
    Meter.objects.filter(key="queue.depth").update(is_active=False)
    assert_error(post_one(client, event(type="queue.depth")), 400, "unknown_meter")
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("role", ["viewer", "billing"])
def test_roles_that_cannot_manage_instances_cannot_post(key_client, meters, role):
    response = key_client(role).post(URL, json.dumps(event()), content_type=ONE)
    assert_error(response, 403, "permission_denied")
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_roles_that_manage_instances_can_post(key_client, meters, role):
    response = key_client(role).post(URL, json.dumps(event()), content_type=ONE)
    assert response.json()["accepted"] == 1


def test_a_revoked_key_cannot_post(org, meters, api_client):
    from portal.accounts import services as account_services
    from portal.accounts.types import Actor

    key, secret = account_services.api_key_create(actor=Actor.system(org), name="k", role="member")
    account_services.api_key_revoke(actor=Actor.system(org), api_key_id=key.pk)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert_error(
        api_client.post(URL, json.dumps(event()), content_type=ONE), 401, "authentication_failed"
    )


def test_events_are_scoped_to_the_keys_organisation(key_client, org, meters, clock):
    other = factories.organization()
    factories.member(other, "owner")
    mine, theirs = key_client("member"), key_client("member", organization=other)
    # An "organization" attribute in the event is an unknown extension: ignored.
    post_batch(mine, [event(subject="mine-1", organization=other.slug, data=3)])
    post_batch(theirs, [event(subject="theirs-1", data=4), event(subject="theirs-1", data=5)])
    assert set(UsageEvent.objects.values_list("organization__slug", "subject")) == {
        (org.slug, "mine-1"),
        (other.slug, "theirs-1"),
    }
    clock.move_to(AFTER)
    services.usage_close_hour(hour_start=HOUR)
    records = {(r.organization_id, r.subject_id): r.quantity for r in UsageRecord.objects.all()}
    assert records == {(org.pk, "mine-1"): Decimal(3), (other.pk, "theirs-1"): Decimal(9)}


def test_the_same_source_and_id_in_two_organisations_are_two_events(key_client, meters):
    other = factories.organization()
    factories.member(other, "owner")
    body = event(id="evt-1", source="inference/llama")
    assert post_one(key_client("member"), body).json()["accepted"] == 1
    response = post_one(key_client("member", organization=other), body)
    assert response.json()["accepted"] == 1


def test_two_organisations_may_use_the_same_subject_name(key_client, meters, clock):
    other = factories.organization()
    factories.member(other, "owner")
    post_one(key_client("member"), event(subject="endpoint-1", data=3))
    post_one(key_client("member", organization=other), event(subject="endpoint-1", data=4))
    clock.move_to(AFTER)
    services.usage_close_hour(hour_start=HOUR)
    assert sorted(UsageRecord.objects.values_list("quantity", flat=True)) == [3, 4]


# --- closing the hour -------------------------------------------------------------------------

# (meter key, time after HOUR, value): what each subject reports. The last microsecond before
# HOUR belongs to the previous hour, HOUR + 1 h to the next (within the 5 minutes ahead allowed,
# as the events arrive at :58).
M = timedelta(minutes=1)
READINGS = [
    ("tokens.generated", 5 * M, "10"),
    ("tokens.generated", 10 * M, "20.5"),
    ("tokens.generated", 45 * M, "0.25"),
    ("tokens.generated", -timedelta(microseconds=1), "1000"),
    ("tokens.generated", 60 * M, "2000"),
    ("gpu.memory_peak", 5 * M, "3"),
    ("gpu.memory_peak", 30 * M, "7.5"),
    ("gpu.memory_peak", 50 * M, "5"),
    ("requests.served", 1 * M, "100"),
    ("requests.served", 2 * M, "0"),
    ("requests.served", 60 * M - timedelta(microseconds=1), "300"),
    ("queue.depth", 5 * M, "4"),
    ("queue.depth", 40 * M, "9"),  # the latest in the hour
    ("queue.depth", 20 * M, "6"),
]
EXPECTED = {  # the 10:00 hour
    "tokens.generated": Decimal("30.75"),
    "gpu.memory_peak": Decimal("7.5"),
    "requests.served": Decimal(3),
    "queue.depth": Decimal(9),
}


def readings(subject: str, order: list[int]) -> list[dict]:
    return [
        event(
            id=f"{subject}-{i}",
            subject=subject,
            type=READINGS[i][0],
            time=(HOUR + READINGS[i][1]).isoformat(),
            data={"value": READINGS[i][2]},
        )
        for i in order
    ]


def records_by_subject() -> dict[str, dict]:
    result: dict[str, dict] = {}
    for r in UsageRecord.objects.filter(hour_start=HOUR).select_related("meter"):
        result.setdefault(r.subject_id, {})[r.meter.key] = r.quantity
    return result


def test_closing_the_hour_follows_each_meters_aggregation_whatever_the_arrival_order(
    client, org, meters, store, clock
):
    in_order = sorted(range(len(READINGS)), key=lambda i: READINGS[i][1])
    # "ordered": in time order, one batch. "shuffled": newest first, over three batches, with
    # every event sent twice (the copies with other values: the first received stands).
    assert post_batch(client, readings("ordered", in_order)).json()["accepted"] == len(READINGS)
    newest_first = readings("shuffled", in_order[::-1])
    bogus = [{**e, "data": {"value": "999999"}} for e in newest_first]
    parts = [newest_first[:5], bogus[:5] + newest_first[5:10], newest_first[10:] + bogus[5:]]
    answers = [post_batch(client, part).json() for part in parts]
    assert sum(a["accepted"] for a in answers) == len(READINGS)
    assert sum(a["duplicates"] for a in answers) == len(READINGS)

    clock.move_to(AFTER)
    created = services.usage_close_hour(hour_start=HOUR)
    assert created == 8  # 2 subjects x 4 meters in the 10:00 hour
    assert records_by_subject() == {"ordered": EXPECTED, "shuffled": EXPECTED}
    for record in UsageRecord.objects.filter(hour_start=HOUR).select_related("meter"):
        assert (record.organization, record.subject_type, record.unit) == (
            org,
            "external",
            record.meter.unit,
        )
        assert record.instance_type_id is None and record.region_id is None

    # Sent again after closing: duplicates, and closing again changes nothing.
    assert post_batch(client, newest_first).json()["duplicates"] == len(READINGS)
    assert services.usage_close_hour(hour_start=HOUR) == 0
    assert records_by_subject() == {"ordered": EXPECTED, "shuffled": EXPECTED}

    # The neighbouring hours hold the boundary events.
    services.usage_close_hour(hour_start=HOUR - timedelta(hours=1))
    previous = UsageRecord.objects.filter(hour_start=HOUR - timedelta(hours=1))
    assert sorted(previous.values_list("subject_id", "quantity")) == [
        ("ordered", Decimal(1000)),
        ("shuffled", Decimal(1000)),
    ]

    # Rebuilding the range gives the same records: nothing to add, fix or remove...
    closed = {
        (r.subject_id, r.meter_id, r.hour_start): r.quantity for r in UsageRecord.objects.all()
    }
    result = services.usage_rebuild(start=HOUR - timedelta(hours=1), end=AFTER)
    assert result == {"created": 0, "fixed": 0, "removed": 0, "kept": len(closed)}
    # ...and from nothing, exactly the same records again.
    UsageRecord.objects.all().delete()
    result = services.usage_rebuild(start=HOUR - timedelta(hours=1), end=AFTER)
    assert result["created"] == len(closed)
    rebuilt = {
        (r.subject_id, r.meter_id, r.hour_start): r.quantity for r in UsageRecord.objects.all()
    }
    assert rebuilt == closed


def test_latest_takes_the_latest_time_not_the_latest_arrival(client, meters, clock):
    post_one(client, event(type="queue.depth", subject="q", time=at(30), data=8))
    post_one(client, event(type="queue.depth", subject="q", time=at(10), data=2))  # older, later
    post_one(client, event(type="gpu.memory_peak", subject="q", time=at(50), data=1))
    clock.move_to(AFTER)
    services.usage_close_hour(hour_start=HOUR)
    assert records_by_subject() == {"q": {"queue.depth": Decimal(8), "gpu.memory_peak": 1}}
