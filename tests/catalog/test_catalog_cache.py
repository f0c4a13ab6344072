"""The catalog's cache: offers and catalog pages are served from the cache until anything they
show changes, and every such change shows at once (a launch, a release, a price, a host going
down, an admin edit); currencies and languages never leak into each other."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone, translation

from portal.catalog import cache as catalog_cache
from portal.catalog import capacity, selectors, services
from portal.catalog.models import HostState
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(make_host, make_type, region):
    """One 8 x H200 host in us-east-1; a 1-GPU and an 8-GPU type priced in USD and CNY."""
    host = make_host(count=8)
    one = make_type("gpu_1x_h200", count=1, vcpus=8, ram_gib=64)
    eight = make_type("gpu_8x_h200", count=8, vcpus=64, ram_gib=512)
    for instance_type, usd, cny in ((one, "3.50", "24.85"), (eight, "28.00", "198.80")):
        services.price_set(
            instance_type=instance_type, region=region, currency="USD", on_demand_per_hour=usd
        )
        services.price_set(
            instance_type=instance_type, region=region, currency="CNY", on_demand_per_hour=cny
        )
    return {"host": host, "one": one, "eight": eight, "east": region}


def api_offers(client, query="") -> dict:
    body = client.get(f"/api/v1/instance-types{query}").json()
    return {row["name"]: row for row in body["results"]}


def api_free(client, name: str) -> int:
    (price,) = api_offers(client)[name]["prices"]
    return price["available"]


def page(client, query="") -> str:
    return client.get(f"/catalog/{query}").content.decode()


def test_a_second_request_is_served_from_the_cache(catalog, key_client):
    client = key_client("viewer")
    first = client.get("/api/v1/instance-types")
    with factories.QueryCounter() as counted:
        second = client.get("/api/v1/instance-types")
    assert second.content == first.content
    assert second["Content-Type"] == "application/json"
    assert counted.n <= 2  # the API key and the catalog version; no offers rebuilt
    Client().get("/catalog/")
    with factories.QueryCounter() as counted:
        assert "gpu_8x_h200" in page(Client())
    assert counted.n == 1


def test_a_reservation_and_a_release_show_at_once_in_the_api_and_the_page(catalog, key_client):
    client, browser = key_client("viewer"), Client()
    assert api_free(client, "gpu_8x_h200") == 1 and api_free(client, "gpu_1x_h200") == 8
    assert "Free now: us-east-1 (1)" in page(browser, "?sort=name")
    allocation = capacity.allocation_reserve(
        instance_type=catalog["one"], region=catalog["east"], holder="instance:1"
    )
    assert api_free(client, "gpu_8x_h200") == 0 and api_free(client, "gpu_1x_h200") == 7
    html = page(browser, "?sort=name")
    assert "Free now: us-east-1 (7)" in html and "Sold out in all 1 region" in html
    capacity.allocation_release(allocation=allocation)
    assert api_free(client, "gpu_8x_h200") == 1 and api_free(client, "gpu_1x_h200") == 8
    assert "Free now: us-east-1 (1)" in page(browser, "?sort=name")


def test_a_launch_through_the_compute_service_shows_at_once(catalog, key_client, org, owner):
    from portal.accounts import services as account_services
    from portal.catalog.models import Image
    from portal.compute import services as compute_services

    Image.objects.create(name="ubuntu", os="Ubuntu 24.04", is_default=True)
    factories.credit(org)
    key = account_services.ssh_key_create(
        actor=factories.actor(org, owner), name="laptop", public_key=factories.ed25519_public_key()
    )
    client = key_client("viewer")
    assert api_free(client, "gpu_8x_h200") == 1
    compute_services.instance_launch(
        actor=factories.actor(org, owner),
        request=compute_services.LaunchRequest(
            name="box", instance_type="gpu_1x_h200", region="us-east-1", ssh_key_ids=(key.pk,)
        ),
    )
    assert api_free(client, "gpu_1x_h200") == 7 and api_free(client, "gpu_8x_h200") == 0


def test_a_new_price_and_a_scheduled_one_show_when_they_take_effect(catalog, key_client):
    client, browser = key_client("viewer"), Client()
    assert api_offers(client)["gpu_1x_h200"]["price_from_per_hour"] == "3.500000"
    assert "3.50 USD" in page(browser, "?gpu_count=1")
    services.price_set(
        instance_type=catalog["one"],
        region=catalog["east"],
        currency="USD",
        on_demand_per_hour="3.20",
    )
    assert api_offers(client)["gpu_1x_h200"]["price_from_per_hour"] == "3.200000"
    html = page(browser, "?gpu_count=1")
    assert "3.20 USD" in html and "3.50" not in html
    tomorrow = timezone.now() + timedelta(days=1)
    services.price_set(
        instance_type=catalog["one"],
        region=catalog["east"],
        currency="USD",
        on_demand_per_hour="2.90",
        effective_from=tomorrow,
    )
    assert api_offers(client)["gpu_1x_h200"]["price_from_per_hour"] == "3.200000"
    assert "3.20 USD" in page(browser)
    with time_machine.travel(tomorrow + timedelta(seconds=1)):
        # nothing was written at that moment: the cached entries knew when they expire
        assert api_offers(client)["gpu_1x_h200"]["price_from_per_hour"] == "2.900000"
        assert "2.90 USD" in page(browser)


def test_a_host_going_down_shows_at_once(catalog, key_client):
    client = key_client("viewer")
    assert api_offers(client)["gpu_1x_h200"]["regions_with_capacity_available"] == ["us-east-1"]
    services.host_set_state(host=catalog["host"], state=HostState.OFFLINE)
    assert api_offers(client)["gpu_1x_h200"]["regions_with_capacity_available"] == []
    assert "Sold out in all 1 region" in page(Client(), "?sort=name")
    services.host_set_state(host=catalog["host"], state=HostState.ACTIVE)
    assert api_offers(client)["gpu_1x_h200"]["regions_with_capacity_available"] == ["us-east-1"]


def test_an_admin_edit_shows_at_once(catalog, key_client):
    client, browser = key_client("viewer"), Client()
    assert set(api_offers(client)) == {"gpu_1x_h200", "gpu_8x_h200"}
    assert "gpu_8x_h200" in page(browser)
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    region = catalog["east"]
    response = staff.post(
        f"/admin/catalog/region/{region.pk}/change/",
        {"code": region.code, "name": "Renamed", "country": "US"},  # "is active" unticked
    )
    assert response.status_code == 302
    assert api_offers(client) == {}
    html = page(browser)
    assert "gpu_8x_h200" not in html and "0 of 0 instance types" in html


def test_currencies_do_not_leak_into_each_other(catalog, key_client):
    usd = key_client("viewer")
    cny = key_client("viewer", organization=factories.organization(currency="CNY"))
    for _ in range(2):  # the second round is served from the cache
        assert api_offers(usd)["gpu_1x_h200"]["currency"] == "USD"
        assert api_offers(cny)["gpu_1x_h200"]["price_from_per_hour"] == "24.850000"
        assert api_offers(usd, "?currency=CNY")["gpu_1x_h200"]["currency"] == "CNY"
        assert "3.50 USD" in page(Client()) and "¥24.85" in page(Client(), "?currency=CNY")
        inside = Client()
        inside.force_login(factories.member(factories.organization(currency="CNY"), "viewer"))
        html = page(inside)
        assert "¥24.85" in html and 'name="currency"' not in html
        assert 'name="currency"' in page(Client())  # the public page keeps its switch


def test_languages_are_cached_apart(db):
    version = catalog_cache.catalog_version()
    with translation.override("en"):
        assert catalog_cache.remember("t", (), lambda: ("english", None), version=version) == (
            "english"
        )
    with translation.override("de"):
        assert catalog_cache.remember("t", (), lambda: ("deutsch", None), version=version) == (
            "deutsch"
        )
    with translation.override("en"):
        assert catalog_cache.remember("t", (), lambda: ("other", None), version=version) == (
            "english"
        )


def test_the_version_moves_now_and_again_after_commit(db, django_capture_on_commit_callbacks):
    before = catalog_cache.catalog_version()
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        catalog_cache.catalog_changed()
        assert catalog_cache.catalog_version() == before + 1  # seen inside at once
    assert len(callbacks) == 1
    assert catalog_cache.catalog_version() == before + 2  # and again once committed


def test_offers_of_another_moment_are_not_taken_from_the_cache(catalog):
    offers = selectors.catalog_offers(currency="USD")
    assert {o.name for o in offers} == {"gpu_1x_h200", "gpu_8x_h200"}
    yesterday = timezone.now() - timedelta(days=1)
    assert selectors.catalog_offers(currency="USD", at=yesterday) == []


@pytest.mark.django_db(transaction=True)
def test_bumping_the_version_takes_no_lock_that_launches_would_queue_on(require_postgres):
    """Two transactions bump the version while both are open: the second neither waits for the
    first nor fails (a counter row would be locked by the first until its commit)."""
    first_bumped, second_done = threading.Event(), threading.Event()
    outcome = {}

    def first() -> None:
        try:
            with transaction.atomic():
                catalog_cache.catalog_changed()
                first_bumped.set()
                second_done.wait(10)  # hold the transaction open
        finally:
            connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_bumped.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '1s'")
            before = catalog_cache.catalog_version()
            catalog_cache.catalog_changed()
            outcome["after"] = catalog_cache.catalog_version()
        assert outcome["after"] == before + 1
    finally:
        second_done.set()
        thread.join(10)


def test_api_rows_are_what_the_instance_type_serializer_says(catalog, make_type):
    from portal.catalog.api.serializers import InstanceTypeSerializer, instance_type_rows

    mig = make_type("mig_1g_18gb", mig="1g.18gb", vcpus=1, ram_gib=8)
    services.price_set(
        instance_type=mig,
        region=catalog["east"],
        currency="USD",
        on_demand_per_hour="0.612345",
        spot_per_hour="0.3",
    )
    west = services.region_ensure(code="us-west-1", name="California")
    services.price_set(
        instance_type=catalog["one"], region=west, currency="USD", on_demand_per_hour="3.1"
    )
    offers = selectors.catalog_offers(currency="USD")
    assert len(offers) == 3
    expected = InstanceTypeSerializer(offers, many=True).data
    assert instance_type_rows(offers) == [dict(row) for row in expected]
    assert [p["region"] for p in expected[0]["prices"]] != []


def test_with_the_cache_down_the_catalog_page_still_answers(catalog, settings):
    """(The API's throttles need the cache already; the public page does not.)"""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens: refused at once
        }
    }
    from django.core.cache import cache

    with pytest.raises(Exception):  # noqa: B017 (whatever the client raises)
        cache.get("anything")
    assert "Free now: us-east-1 (1)" in page(Client(), "?sort=name")
    capacity.allocation_reserve(
        instance_type=catalog["one"], region=catalog["east"], holder="instance:1"
    )
    assert "Free now: us-east-1 (7)" in page(Client(), "?sort=name")
    offer = next(o for o in selectors.catalog_offers(currency="USD") if o.name == "gpu_8x_h200")
    assert offer.sold_out
