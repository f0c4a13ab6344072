"""portal.sql: plain SQL reads give what the ORM gives (decimals, datetimes, flags, JSON), on
PostgreSQL and SQLite alike, and build model instances without another query."""

import datetime
from decimal import Decimal

import pytest

from portal.catalog.models import InstanceType, MigProfile, Price, Region
from portal.sql import Columns, execute, placeholders, rows
from tests.factories import QueryCounter, World

pytestmark = pytest.mark.django_db


def test_columns_read_every_field_as_the_orm_does():
    World(hosts=1)
    price_columns, profile_columns = Columns(Price, "p"), Columns(MigProfile, "mp")
    sql = (
        f"SELECT {price_columns.sql}, {profile_columns.sql} FROM catalog_price p"
        " JOIN catalog_instancetype t ON t.id = p.instance_type_id"
        " LEFT JOIN catalog_migprofile mp ON mp.id = t.mig_profile_id ORDER BY p.id"
    )
    found = rows(sql, (), [*price_columns.fields, *profile_columns.fields])
    expected = list(Price.objects.select_related("instance_type__mig_profile").order_by("id"))
    assert len(found) == len(expected) > 1
    seen_profile = seen_whole = False
    for row, orm in zip(found, expected, strict=True):
        price = price_columns.instance(row, 0)
        profile = profile_columns.instance(row, len(price_columns))
        for field in Price._meta.concrete_fields:
            assert getattr(price, field.attname) == getattr(orm, field.attname), field.name
            assert type(getattr(price, field.attname)) is type(getattr(orm, field.attname))
        assert isinstance(price.on_demand_per_hour, Decimal)
        assert price.effective_from.tzinfo is not None
        if orm.instance_type.mig_profile is None:
            assert profile is None  # nothing joined: no instance
            seen_whole = True
        else:
            assert profile == orm.instance_type.mig_profile
            assert profile.placements == orm.instance_type.mig_profile.placements
            assert isinstance(profile.placements, list)
            seen_profile = True
    assert seen_profile and seen_whole


def test_parameters_are_adapted_as_the_orm_adapts_them():
    World(hosts=1)
    latest = Price.objects.order_by("-effective_from").first()
    before = latest.effective_from - datetime.timedelta(microseconds=1)
    sql = "SELECT id FROM catalog_price WHERE effective_from <= %s AND on_demand_per_hour >= %s"
    at_latest = {pk for (pk,) in rows(sql, [latest.effective_from, latest.on_demand_per_hour])}
    expected = set(
        Price.objects.filter(
            effective_from__lte=latest.effective_from,
            on_demand_per_hour__gte=latest.on_demand_per_hour,
        ).values_list("id", flat=True)
    )
    assert latest.pk in at_latest
    assert at_latest == expected
    assert latest.pk not in {pk for (pk,) in rows(sql, [before, Decimal(0)])}


def test_flags_in_where_and_in_lists():
    world = World(hosts=1)
    Region.objects.filter(pk=world.region.pk).update(is_active=False)
    names = list(InstanceType.objects.values_list("name", flat=True)[:2])
    sql = f"SELECT name FROM catalog_instancetype WHERE name IN ({placeholders(names)})"
    assert sorted(name for (name,) in rows(sql, names)) == sorted(names)
    assert (
        rows("SELECT id FROM catalog_region WHERE is_active AND id = %s", [world.region.pk]) == []
    )


def test_execute_counts_the_rows_it_changed_and_one_read_is_one_query():
    world = World(hosts=1)
    changed = execute(
        "UPDATE catalog_region SET name = %s WHERE id = %s", ["Renamed", world.region.pk]
    )
    assert changed == 1
    with QueryCounter() as counted:
        assert rows("SELECT name FROM catalog_region WHERE id = %s", [world.region.pk]) == [
            ["Renamed"]
        ]
    assert counted.n == 1
