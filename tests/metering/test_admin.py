"""The metering admin: every page loads, usage is read-only with its filters and search,
meter prices are append-only (with audit rows), built-in meters keep their key and stay."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from portal.accounts.models import AuditEvent
from portal.metering import ingest, services
from portal.metering.admin import IN_FORCE, SCHEDULED, SUPERSEDED, meter_prices_with_status
from portal.metering.models import (
    Aggregation,
    ClosedHour,
    Meter,
    MeterPrice,
    UsageEvent,
    UsageRecord,
)
from tests import factories

pytestmark = pytest.mark.django_db

HOUR = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
NOW = HOUR + timedelta(hours=2, minutes=5)
MODELS = ["meter", "usagerecord", "usageevent", "closedhour"]


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def operator():
    return factories.user(email="ops@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def tokens():
    return Meter.objects.create(key="tokens.generated", name="Tokens", unit="token")


def report(org, meter: Meter, hour: datetime, subjects: int, tag: str) -> None:
    """Usage events of ``subjects`` subjects in ``hour``, through the ingest service."""
    events = [
        {
            "specversion": "1.0",
            "id": f"{tag}-{i}",
            "source": "test",
            "type": meter.key,
            "subject": f"{tag}-{i}",
            "time": (hour + timedelta(minutes=i)).isoformat(),
            "data": i + 1,
        }
        for i in range(subjects)
    ]
    actor = factories.actor(org, factories.member(org, "member"))
    assert ingest.usage_events_ingest(actor=actor, events=events).accepted == subjects


@pytest.fixture
def usage(org, tokens):
    """Built-in meters, a price, and records of two organisations in two closed hours."""
    services.builtin_meters()
    MeterPrice.objects.create(
        meter=tokens, currency="USD", price_per_unit=Decimal("0.002"), effective_from=HOUR
    )
    other = factories.organization(name="Blue Whale Labs")
    report(org, tokens, HOUR, 2, "acme")
    report(other, tokens, HOUR, 1, "whale")
    report(org, tokens, HOUR + timedelta(hours=1), 1, "later")
    services.usage_close_hour(hour_start=HOUR)
    services.usage_close_hour(hour_start=HOUR + timedelta(hours=1))
    return {"org": org, "other": other}


def listed(client, url: str) -> list:
    response = client.get(url)
    assert response.status_code == 200, url
    return list(response.context["cl"].result_list)


# --- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_list_search_and_change_page_loads(staff_client, usage, model):
    objects = listed(staff_client, f"/admin/metering/{model}/")
    assert objects, f"no {model} rows to open"
    for obj in objects[:3]:
        assert staff_client.get(f"/admin/metering/{model}/{obj.pk}/change/").status_code == 200
    assert staff_client.get(f"/admin/metering/{model}/?q=whale").status_code == 200


@pytest.mark.parametrize("model", MODELS)
def test_list_pages_do_not_query_per_row(staff_client, usage, tokens, model, clock):
    staff_client.get(f"/admin/metering/{model}/")  # warm the session and content types
    with factories.QueryCounter() as small:
        rows = len(staff_client.get(f"/admin/metering/{model}/").context["cl"].result_list)
    third = HOUR + timedelta(hours=2)  # after the closed hours: earlier ones are refused
    report(usage["org"], tokens, third, 5, "more")
    clock.move_to(third + timedelta(hours=1, minutes=15))
    services.usage_close_hour(hour_start=third)
    Meter.objects.create(key="more.things", name="More", unit="thing")
    with factories.QueryCounter() as large:
        more = len(staff_client.get(f"/admin/metering/{model}/").context["cl"].result_list)
    assert more > rows
    assert large.n == small.n


def test_usage_records_are_searched_by_organisation_and_filtered(staff_client, usage, tokens):
    whale = listed(staff_client, "/admin/metering/usagerecord/?q=blue+whale")
    assert [(r.organization, r.subject_id) for r in whale] == [(usage["other"], "whale-0")]
    by_slug = listed(staff_client, f"/admin/metering/usagerecord/?q={usage['org'].slug}")
    assert sorted(r.subject_id for r in by_slug) == ["acme-0", "acme-1", "later-0"]

    hour = listed(staff_client, "/admin/metering/usagerecord/?hour=2026-03-10T11:00Z")
    assert [r.subject_id for r in hour] == ["later-0"]
    assert listed(staff_client, "/admin/metering/usagerecord/?hour=not-an-hour") == []
    page = staff_client.get("/admin/metering/usagerecord/").content.decode()
    assert "2026-03-10 11:00 UTC" in page and "2026-03-10 10:00 UTC" in page  # hour choices

    meter = listed(staff_client, f"/admin/metering/usagerecord/?meter__id__exact={tokens.pk}")
    assert len(meter) == 4
    assert listed(staff_client, "/admin/metering/usagerecord/?subject_type__exact=instance") == []
    assert (
        len(listed(staff_client, "/admin/metering/usagerecord/?subject_type__exact=external")) == 4
    )


def test_usage_events_are_searched_and_filtered(staff_client, usage, tokens):
    whale = listed(staff_client, "/admin/metering/usageevent/?q=whale")
    assert [(e.organization, e.subject) for e in whale] == [(usage["other"], "whale-0")]
    assert (
        len(listed(staff_client, f"/admin/metering/usageevent/?meter__id__exact={tokens.pk}")) == 4
    )


@pytest.mark.parametrize("model", ["usagerecord", "usageevent", "closedhour"])
def test_usage_is_read_only(staff_client, usage, model):
    obj = listed(staff_client, f"/admin/metering/{model}/")[0]
    assert staff_client.get(f"/admin/metering/{model}/add/").status_code == 403
    html = staff_client.get(f"/admin/metering/{model}/{obj.pk}/change/").content.decode()
    assert 'name="_save"' not in html
    assert staff_client.post(f"/admin/metering/{model}/{obj.pk}/change/", {}).status_code == 403
    response = staff_client.post(f"/admin/metering/{model}/{obj.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).exists()
    counts = (UsageRecord.objects.count(), UsageEvent.objects.count(), ClosedHour.objects.count())
    assert counts == (4, 4, 2)


# --- meters and prices ------------------------------------------------------------------------


def meter_form(meter: Meter, prices: list[dict] | None = None, **fields) -> dict:
    """The meter change form as the browser sends it: existing prices by id, new ones after."""
    existing = list(meter.prices.order_by("currency", "-effective_from")) if meter.pk else []
    data = {
        "key": meter.key,
        "name": meter.name,
        "unit": meter.unit,
        "aggregation": meter.aggregation,
        "is_active": "on" if meter.is_active else "",
        "prices-TOTAL_FORMS": str(len(existing) + len(prices or [])),
        "prices-INITIAL_FORMS": str(len(existing)),
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    for i, price in enumerate(existing):
        data[f"prices-{i}-id"] = str(price.pk)
        data[f"prices-{i}-meter"] = str(meter.pk) if meter.pk else ""
    for i, price in enumerate(prices or [], start=len(existing)):
        start = price.get("effective_from")
        data.update(
            {
                f"prices-{i}-meter": str(meter.pk) if meter.pk else "",
                f"prices-{i}-currency": price["currency"],
                f"prices-{i}-price_per_unit": price["price_per_unit"],
                f"prices-{i}-effective_from_0": f"{start:%Y-%m-%d}" if start else "",
                f"prices-{i}-effective_from_1": f"{start:%H:%M:%S}" if start else "",
                f"prices-{i}-region": str(price["region"].pk) if price.get("region") else "",
            }
        )
    data.update(fields)
    return data


def change(client, meter: Meter, prices=None, **fields):
    return client.post(
        f"/admin/metering/meter/{meter.pk}/change/", meter_form(meter, prices, **fields)
    )


def test_adding_a_meter_price_works_and_is_audited(staff_client, operator, tokens, clock):
    response = change(staff_client, tokens, [{"currency": "USD", "price_per_unit": "0.002"}])
    assert response.status_code == 302, response.context and response.context["errors"]
    (price,) = tokens.prices.all()
    assert (price.currency, price.price_per_unit, price.effective_from) == (
        "USD",
        Decimal("0.002"),
        NOW,
    )
    event = AuditEvent.objects.get(action="meter_price.set")
    assert (event.actor_user, event.actor_label) == (operator, f"operator {operator.email}")
    assert (event.target_type, event.target_id) == ("MeterPrice", str(price.pk))
    assert event.details == {
        "meter": "tokens.generated",
        "currency": "USD",
        "price_per_unit": "0.002",
        "from": NOW.isoformat(),
    }

    # A scheduled change: the first stays in force until then, and is superseded after.
    later = NOW + timedelta(days=1)
    response = change(
        staff_client,
        tokens,
        [{"currency": "USD", "price_per_unit": "0.003", "effective_from": later}],
    )
    assert response.status_code == 302
    page = staff_client.get(f"/admin/metering/meter/{tokens.pk}/change/")
    statuses = {
        form.instance.price_per_unit: form.instance.price_status
        for form in page.context["inline_admin_formsets"][0].formset.initial_forms
    }
    assert statuses == {Decimal("0.002"): IN_FORCE, Decimal("0.003"): SCHEDULED}
    clock.move_to(later + timedelta(minutes=1))
    page = staff_client.get(f"/admin/metering/meter/{tokens.pk}/change/")
    statuses = {
        form.instance.price_per_unit: form.instance.price_status
        for form in page.context["inline_admin_formsets"][0].formset.initial_forms
    }
    assert statuses == {Decimal("0.002"): SUPERSEDED, Decimal("0.003"): IN_FORCE}
    assert AuditEvent.objects.filter(action="meter_price.set").count() == 2


def test_a_new_meter_can_be_added_with_its_first_price(staff_client):
    data = meter_form(
        Meter(key="tokens.generated", name="Tokens", unit="token", aggregation="sum"),
        [{"currency": "CNY", "price_per_unit": "0.01"}],
    )
    response = staff_client.post("/admin/metering/meter/add/", data)
    assert response.status_code == 302, response.context and response.context["errors"]
    meter = Meter.objects.get(key="tokens.generated")
    assert (meter.built_in, meter.aggregation, meter.is_active) == (False, Aggregation.SUM, True)
    assert [(p.currency, p.price_per_unit) for p in meter.prices.all()] == [
        ("CNY", Decimal("0.01"))
    ]


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (
            {
                "currency": "USD",
                "price_per_unit": "0.5",
                "effective_from": NOW - timedelta(hours=1),
            },
            "A price cannot start in the past",
        ),
        ({"currency": "USD", "price_per_unit": "-0.5"}, "A price cannot be negative."),
        ({"currency": "", "price_per_unit": "0.5"}, "This field is required."),
        ({"currency": "USD", "price_per_unit": "lots"}, "Enter a number."),
    ],
)
def test_a_bad_price_is_refused_on_the_form(staff_client, tokens, price, message):
    response = change(staff_client, tokens, [price])
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not MeterPrice.objects.exists()
    assert not AuditEvent.objects.filter(action="meter_price.set").exists()


def test_existing_prices_cannot_be_edited_or_deleted(staff_client, tokens):
    price = MeterPrice.objects.create(
        meter=tokens, currency="USD", price_per_unit=Decimal("0.002"), effective_from=HOUR
    )
    html = staff_client.get(f"/admin/metering/meter/{tokens.pk}/change/").content.decode()
    assert 'name="prices-0-price_per_unit"' not in html  # shown, not editable
    assert 'name="prices-0-DELETE"' not in html
    assert 'name="prices-1-price_per_unit"' in html  # a row to add one
    data = meter_form(tokens)
    data.update(
        {
            "prices-0-currency": "CNY",
            "prices-0-price_per_unit": "9",
            "prices-0-effective_from_0": "2030-01-01",
            "prices-0-effective_from_1": "00:00:00",
            "prices-0-DELETE": "on",
        }
    )
    response = staff_client.post(f"/admin/metering/meter/{tokens.pk}/change/", data)
    assert response.status_code == 302
    price.refresh_from_db()
    assert (price.currency, price.price_per_unit, price.effective_from) == (
        "USD",
        Decimal("0.002"),
        HOUR,
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("instance.seconds", "reserved for the portal"),
        ("tokens generated", "Use letters, digits, dots"),
        (".tokens", "Use letters, digits, dots"),
        ("tokens.generated", "already exists"),
    ],
)
def test_meter_keys_are_checked(staff_client, tokens, key, message):
    data = meter_form(Meter(key=key, name="N", unit="u", aggregation="sum"))
    response = staff_client.post("/admin/metering/meter/add/", data)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["key"])
    assert Meter.objects.filter(key=key).count() == (1 if key == "tokens.generated" else 0)


def test_operators_may_rename_an_operator_meters_key(staff_client, tokens):
    response = change(staff_client, tokens, key="tokens.output", aggregation="max")
    assert response.status_code == 302
    tokens.refresh_from_db()
    assert (tokens.key, tokens.aggregation) == ("tokens.output", Aggregation.MAX)


def test_built_in_meters_keep_their_key_and_cannot_be_deleted(staff_client):
    meter = services.builtin_meters()["instance.seconds"]
    html = staff_client.get(f"/admin/metering/meter/{meter.pk}/change/").content.decode()
    assert 'name="key"' not in html and 'name="unit"' not in html
    response = change(
        staff_client,
        meter,
        key="instance.renamed",
        name="Running time",
        unit="hour",
        aggregation="max",
        is_active="",
        built_in="",
    )
    assert response.status_code == 302
    meter.refresh_from_db()
    assert (meter.key, meter.name, meter.unit, meter.aggregation) == (
        "instance.seconds",
        "Running time",
        "second",
        Aggregation.SUM,
    )
    assert (meter.built_in, meter.is_active) == (True, True)

    url = f"/admin/metering/meter/{meter.pk}/delete/"
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    response = staff_client.post(
        "/admin/metering/meter/",
        {"action": "delete_selected", "_selected_action": [meter.pk], "post": "yes"},
    )
    assert response.status_code == 403
    assert Meter.objects.filter(pk=meter.pk).exists()
    assert f'href="/admin/metering/meter/{meter.pk}/delete/"' not in html  # no Delete button


def test_an_unused_operator_meter_can_be_deleted_a_used_one_cannot(staff_client, org, tokens):
    spare = Meter.objects.create(key="spare.meter", name="Spare", unit="thing")
    response = staff_client.post(f"/admin/metering/meter/{spare.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Meter.objects.filter(pk=spare.pk).exists()

    report(org, tokens, HOUR, 1, "used")
    response = staff_client.post(f"/admin/metering/meter/{tokens.pk}/delete/", {"post": "yes"})
    assert "Cannot delete" in response.content.decode()
    assert Meter.objects.filter(pk=tokens.pk).exists()


def test_the_no_gpu_price_is_set_per_region_and_only_it_may_have_one(staff_client, tokens):
    from portal.metering.lifecycle_usage import NO_GPU
    from tests.factories import catalog as catalog_factories

    no_gpu = services.builtin_meters()[NO_GPU]
    east = catalog_factories.region("us-east-1")
    html = staff_client.get(f"/admin/metering/meter/{no_gpu.pk}/change/").content.decode()
    assert 'name="prices-0-region"' in html
    everywhere = {"currency": "CNY", "price_per_unit": "0.85"}
    there = {"currency": "CNY", "price_per_unit": "0.60", "region": east}
    response = change(staff_client, no_gpu, [everywhere, there])
    assert response.status_code == 302, response.context and response.context["errors"]
    rows = {
        p.region_id: p for p in meter_prices_with_status(MeterPrice.objects.filter(meter=no_gpu))
    }
    assert rows[None].price_per_unit == Decimal("0.85")
    assert rows[east.pk].price_per_unit == Decimal("0.60")
    # one region's row does not supersede the every-region one, nor the other way round
    assert {p.price_status for p in rows.values()} == {IN_FORCE}
    regions = [e.details.get("region") for e in AuditEvent.objects.filter(action="meter_price.set")]
    assert sorted(regions, key=str) == [None, "us-east-1"]

    refused = change(staff_client, tokens, [{**there, "currency": "USD"}])
    assert refused.status_code == 200
    assert "Only the no-GPU mode" in refused.content.decode()
    assert not tokens.prices.exists()
