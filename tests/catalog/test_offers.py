"""Offers: prices in force, currencies, filters and sorting, in the API and on the page."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from portal.catalog import cache as catalog_cache
from portal.catalog import capacity, selectors, services
from portal.catalog.models import Price
from portal.errors import InvalidInput
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(make_host, make_type, region):
    """Two regions; H200 whole and MIG types, one A100 type; hosts only in us-east-1."""
    west = services.region_ensure(code="us-west-1", name="California", country="US")
    make_host(count=8)
    one = make_type("gpu_1x_h200", count=1, vcpus=8, ram_gib=64)
    eight = make_type("gpu_8x_h200", count=8, vcpus=64, ram_gib=512)
    mig = make_type("mig_1g_18gb", mig="1g.18gb", vcpus=1, ram_gib=8)
    a100 = make_type("gpu_1x_a100", gpu="a100-sxm4-40gb", count=1)
    for instance_type, usd in ((one, "3.50"), (eight, "28.00"), (mig, "0.60"), (a100, "1.20")):
        services.price_set(
            instance_type=instance_type, region=region, currency="USD", on_demand_per_hour=usd
        )
    services.price_set(
        instance_type=one,
        region=west,
        currency="USD",
        on_demand_per_hour="3.10",
        spot_per_hour="1.5",
    )
    services.price_set(instance_type=one, region=region, currency="CNY", on_demand_per_hour="24.85")
    return {"one": one, "eight": eight, "mig": mig, "a100": a100, "east": region, "west": west}


def names(offers):
    return [o.name for o in offers]


def test_price_in_force_is_the_latest_effective_at_or_before_now(catalog):
    one, east = catalog["one"], catalog["east"]
    tomorrow = timezone.now() + timedelta(days=1)
    services.price_set(
        instance_type=one,
        region=east,
        currency="USD",
        on_demand_per_hour="2.99",
        effective_from=tomorrow,
    )
    offer = next(o for o in selectors.catalog_offers(currency="USD") if o.name == one.name)
    assert selectors.offer_price(offer, "us-east-1") == Decimal("3.50")
    with time_machine.travel(tomorrow + timedelta(minutes=1)):
        offer = next(o for o in selectors.catalog_offers(currency="USD") if o.name == one.name)
        assert selectors.offer_price(offer, "us-east-1") == Decimal("2.99")


def test_setting_the_same_price_again_changes_nothing(catalog):
    before = Price.objects.count()
    _, created = services.price_set(
        instance_type=catalog["one"],
        region=catalog["east"],
        currency="USD",
        on_demand_per_hour="3.500000",
    )
    assert not created and Price.objects.count() == before


@pytest.mark.parametrize(
    ("currency", "on_demand", "spot", "fragment"),
    [
        ("", "1.00", None, "has no currency"),
        ("EUR", "1.00", None, "not one of"),
        ("USD", "0", None, "must be positive"),
        ("USD", "-1", None, "must be positive"),
        ("USD", "abc", None, "not a number"),
        ("USD", "NaN", None, "not a finite number"),
        ("USD", "1.00", "0", "spot price"),
        ("USD", "1.0000001", None, "at most 6 decimal places"),
    ],
)
def test_bad_prices_are_refused_and_write_nothing(catalog, currency, on_demand, spot, fragment):
    before = Price.objects.count()
    with pytest.raises(InvalidInput) as caught:
        services.price_set(
            instance_type=catalog["one"],
            region=catalog["east"],
            currency=currency,
            on_demand_per_hour=on_demand,
            spot_per_hour=spot,
        )
    assert caught.value.code == "price_invalid"
    assert fragment in caught.value.message
    assert Price.objects.count() == before


def test_no_currency_conversion_is_guessed(catalog):
    assert names(selectors.catalog_offers(currency="CNY")) == ["gpu_1x_h200"]


def test_filters_and_sorts(catalog):
    offers = selectors.catalog_offers(currency="USD")
    q = selectors.CatalogQuery
    assert names(selectors.filter_offers(offers, q(sort="price"))) == [
        "mig_1g_18gb",
        "gpu_1x_a100",
        "gpu_1x_h200",
        "gpu_8x_h200",
    ]
    assert names(selectors.filter_offers(offers, q(gpu_model="h200-sxm-141gb", gpu_count=8))) == [
        "gpu_8x_h200"
    ]
    assert names(selectors.filter_offers(offers, q(min_gpu_memory_gb=141))) == [
        "gpu_1x_h200",
        "gpu_8x_h200",
    ]
    assert names(selectors.filter_offers(offers, q(max_price=Decimal("1.20")))) == [
        "mig_1g_18gb",
        "gpu_1x_a100",
    ]
    assert names(selectors.filter_offers(offers, q(region="us-west-1"))) == ["gpu_1x_h200"]
    # Available now: no A100 host exists; nothing is free in us-west-1.
    assert "gpu_1x_a100" not in names(selectors.filter_offers(offers, q(available=True)))
    assert names(selectors.filter_offers(offers, q(available=True, region="us-west-1"))) == []
    # Per GPU-hour: the MIG slice is 1/7 of a GPU, so 0.60 * 7 = 4.20 per GPU-hour.
    # gpu_1x_h200 is 3.10 in us-west-1; the 8x is 28.00 / 8 = 3.50.
    assert names(selectors.filter_offers(offers, q(sort="price_per_gpu"))) == [
        "gpu_1x_a100",
        "gpu_1x_h200",
        "gpu_8x_h200",
        "mig_1g_18gb",
    ]
    # TFLOPS per dollar: 989 / 3.10 for the 1x H200 beats 8 * 989 / 28 and 312 / 1.20.
    assert names(selectors.filter_offers(offers, q(sort="tflops_per_dollar"))) == [
        "gpu_1x_h200",
        "gpu_8x_h200",
        "gpu_1x_a100",
        "mig_1g_18gb",
    ]


def test_api_instance_types_with_prices_and_capacity(catalog, key_client):
    client = key_client("viewer")
    body = client.get("/api/v1/instance-types?gpu_model=h200-sxm-141gb&sort=price").json()
    assert [r["name"] for r in body["results"]] == ["mig_1g_18gb", "gpu_1x_h200", "gpu_8x_h200"]
    one = body["results"][1]
    assert one["currency"] == "USD"
    assert one["price_from_per_hour"] == "3.100000"
    assert one["specs"]["gpu_count"] == 1 and one["specs"]["gpu_model_code"] == "h200-sxm-141gb"
    assert one["regions_with_capacity_available"] == ["us-east-1"]
    assert {
        p["region"]: (p["on_demand_per_hour"], p["spot_per_hour"], p["available"])
        for p in one["prices"]
    } == {
        "us-east-1": ("3.500000", None, 8),
        "us-west-1": ("3.100000", None, 0),  # a spot price exists but the type is not spot-allowed
    }
    cny = client.get("/api/v1/instance-types?currency=CNY").json()
    assert [r["name"] for r in cny["results"]] == ["gpu_1x_h200"]


def test_api_instance_types_default_to_the_organizations_currency(catalog, key_client):
    org = factories.organization(currency="CNY")
    client = key_client("viewer", organization=org)
    assert [r["name"] for r in client.get("/api/v1/instance-types").json()["results"]] == [
        "gpu_1x_h200"
    ]


@pytest.mark.parametrize(
    "query",
    [
        "gpu_count=0",
        "gpu_count=x",
        "max_price=-1",
        "currency=EUR",
        "sort=random",
        "min_gpu_memory_gb=abc",
    ],
)
def test_api_rejects_bad_filters_with_details(catalog, key_client, query):
    response = key_client("viewer").get(f"/api/v1/instance-types?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert query.split("=")[0] in error["details"]


def test_api_regions_images_gpu_models(catalog, key_client):
    client = key_client("viewer")
    regions = client.get("/api/v1/regions").json()["results"]
    assert {r["code"]: r["country"] for r in regions} == {"us-east-1": "US", "us-west-1": "US"}
    models = {
        m["code"]: m for m in client.get("/api/v1/gpu-models?mig_capable=true").json()["results"]
    }
    h200 = models["h200-sxm-141gb"]
    assert h200["memory_gb"] == 141 and h200["bf16_tflops"] == "989.0"
    assert {p["name"]: (p["placements"], p["memory_slots"]) for p in h200["mig_profiles"]}[
        "3g.71gb"
    ] == ([0, 4], 4)
    assert "l4-pcie-24gb" not in models
    from portal.catalog.models import Image

    everywhere = Image.objects.create(name="base", os="Ubuntu 24.04")
    only_a100 = Image.objects.create(name="a100-only", os="Ubuntu 22.04")
    only_a100.instance_types.add(catalog["a100"])
    images = {
        i["name"]: i["instance_types"] for i in client.get("/api/v1/images").json()["results"]
    }
    assert images == {"base": [], "a100-only": ["gpu_1x_a100"]}
    supported = client.get("/api/v1/images?instance_type=gpu_1x_h200").json()["results"]
    assert [i["name"] for i in supported] == [everywhere.name]


def test_api_and_page_query_counts_do_not_grow_with_the_catalog(
    catalog, make_host, make_type, key_client
):
    client = key_client("viewer")
    page = Client()

    def count(fetch, *, rebuilt=True) -> int:
        if rebuilt:  # a new catalog version: the offers and the page are built afresh
            catalog_cache.catalog_changed()
        with factories.QueryCounter() as counted:
            assert fetch().status_code == 200
        return counted.n

    client.get("/api/v1/instance-types")  # the first call also stamps the key's last use
    api_before = count(lambda: client.get("/api/v1/instance-types"))
    page_before = count(lambda: page.get("/catalog/"))
    region2 = services.region_ensure(code="eu-1", name="Europe")
    for i in range(5):
        make_host(count=8, in_region=region2)
        t = make_type(f"extra_{i}", count=2, vcpus=4, ram_gib=16)
        services.price_set(
            instance_type=t, region=region2, currency="USD", on_demand_per_hour="9.99"
        )
    # The version read is the one query added to the eight a build takes.
    assert count(lambda: client.get("/api/v1/instance-types")) == api_before <= 9
    assert count(lambda: page.get("/catalog/")) == page_before <= 10
    # Served from the cache: the API key and the version; the page only the version.
    assert count(lambda: client.get("/api/v1/instance-types"), rebuilt=False) <= 2
    assert count(lambda: page.get("/catalog/"), rebuilt=False) <= 1


def test_public_catalog_page_filters_in_the_url_and_htmx_partial(catalog):
    client = Client()
    html = client.get("/catalog/?gpu_model=h200-sxm-141gb&available=on&sort=price").content.decode()
    assert "gpu_1x_h200" in html and "gpu_1x_a100" not in html
    partial = client.get("/catalog/?sort=price", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="offer-list"' in partial and "<html" not in partial
    assert "Sold out" in partial  # the A100 type stays visible and says so
    assert "4 of 4 instance types" in partial


@pytest.mark.django_db
def test_the_catalog_page_advertises_no_spot_prices_while_spot_cannot_be_launched():
    from portal.catalog.demo import load_demo_catalog

    load_demo_catalog()  # has types that allow spot
    html = Client().get("/catalog/").content.decode().lower()
    assert "spot" not in html


def test_catalog_page_inside_the_app_uses_the_organizations_currency(catalog):
    org = factories.organization(currency="CNY")
    client = Client()
    client.force_login(factories.member(org, "viewer"))
    html = client.get("/catalog/").content.decode()
    assert "¥24.85" in html and "1 of 1 instance type" in html
    assert 'name="currency"' not in html


def test_catalog_page_bad_filter_values_show_errors_not_500(catalog):
    response = Client().get("/catalog/?max_price=-5&gpu_count=3&sort=nope")
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()


def test_capacity_shows_in_offers(catalog):
    capacity.allocation_reserve(instance_type=catalog["eight"], region=catalog["east"], holder="x")
    offer = next(o for o in selectors.catalog_offers(currency="USD") if o.name == "gpu_8x_h200")
    assert offer.sold_out


def test_catalog_page_paginates_and_keeps_filters_in_page_links(catalog, make_type):
    for i in range(30):
        t = make_type(f"bulk_{i:02d}", count=1, vcpus=1, ram_gib=1)
        services.price_set(
            instance_type=t, region=catalog["east"], currency="USD", on_demand_per_hour="5.00"
        )
    html = Client().get("/catalog/?sort=name&region=us-east-1").content.decode()
    assert "34 of 34 instance types in us-east-1, page 1 of 2" in html
    assert "?sort=name&amp;region=us-east-1&amp;page=2" in html
    second = Client().get("/catalog/?sort=name&region=us-east-1&page=2").content.decode()
    assert second.count("<article") == 4
