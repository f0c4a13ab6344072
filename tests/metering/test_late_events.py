"""Usage is never accepted and then silently left out: events of a closed hour are refused,
unless they are re-sent copies (duplicates, as usual)."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from portal.metering import ingest, services
from portal.metering.models import Meter, UsageRecord
from tests import factories

pytestmark = pytest.mark.django_db
HOUR = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)


def event(i, time):
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "s",
        "type": "tokens.generated",
        "subject": "job",
        "time": time.isoformat(),
        "data": 5,
    }


def test_events_of_a_closed_hour_are_refused_and_copies_stay_duplicates(org):
    Meter.objects.create(key="tokens.generated", name="Tokens", unit="token")
    actor = factories.actor(org, factories.member(org, "member"))
    with time_machine.travel(HOUR + timedelta(minutes=30), tick=False) as clock:
        assert (
            ingest.usage_events_ingest(
                actor=actor, events=[event(1, HOUR + timedelta(minutes=5))]
            ).accepted
            == 1
        )
        clock.move_to(HOUR + timedelta(hours=1, minutes=15))
        services.usage_close_recent()  # closes 10:00 (ended more than the grace ago)
        result = ingest.usage_events_ingest(
            actor=actor,
            events=[event(1, HOUR + timedelta(minutes=5)), event(2, HOUR + timedelta(minutes=50))],
        )
    assert (result.accepted, result.duplicates) == (0, 1)
    assert [r.code for r in result.rejected] == ["time_closed"]
    assert UsageRecord.objects.get().quantity == 5  # the total never changes behind our back


def test_an_hour_is_closed_only_after_a_grace_period(org):
    from portal.catalog.models import Region
    from portal.compute.models import Volume
    from portal.metering.models import ClosedHour

    region = Region.objects.create(code="r1", name="R1")
    Volume.objects.create(
        organization=org, region=region, name="v", size_gb=1, created_at=HOUR - timedelta(hours=1)
    )
    with time_machine.travel(HOUR + timedelta(hours=1, minutes=3), tick=False):
        services.usage_close_recent()
    closed = list(ClosedHour.objects.values_list("hour_start", flat=True))
    assert closed == [HOUR - timedelta(hours=1)]  # 10:00 ended only 3 minutes ago


def test_usage_page_refuses_dates_it_cannot_compute(org, owner):
    client = Client()
    client.force_login(owner)
    assert client.get("/usage/?start=9999-12-31&end=9999-12-31").status_code == 422
    assert client.get("/usage/export.csv?start=9999-12-31&end=9999-12-31").status_code == 422
