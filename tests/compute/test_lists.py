"""The instance lists read lean rows: the API's rows are exactly what ``InstanceSerializer``
says of each instance, in a fixed number of queries, and the page's rows are the same markup
as the row a transitional instance polls."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from portal.compute import selectors
from portal.compute.api.serializers import InstanceSerializer, instance_list_rows
from portal.compute.lifecycle import allowed_actions
from portal.compute.models import Instance
from tests.factories import QueryCounter

pytestmark = pytest.mark.django_db
STATES = ["pending", "provisioning", "running", "stopping", "stopped", "terminated", "failed"]


@pytest.fixture
def instances(org, compute_catalog):
    """One instance in each state; the running one has an address and a start time."""
    now = timezone.now()
    rows = []
    for i, state in enumerate(STATES):
        rows.append(
            Instance(
                organization=org,
                name=f"box-{state}",
                instance_type=compute_catalog["one"],
                region=compute_catalog["east"],
                image=compute_catalog["image"],
                disk_gb=100 + i,
                backend="simulated",
                state=state,
                status_message="booting" if state == "provisioning" else "",
                observed_state="running" if state == "running" else "",
                ip_address="10.0.0.7" if state == "running" else None,
                running_since=now - timedelta(minutes=5) if state == "running" else None,
                terminated_at=now if state == "terminated" else None,
                created_at=now - timedelta(hours=i, microseconds=i * 1234),
            )
        )
    return Instance.objects.bulk_create(rows)


def test_api_rows_are_what_the_instance_serializer_says(org, instances):
    expected = InstanceSerializer(selectors.instances_list(org), many=True).data
    assert instance_list_rows(selectors.instance_list_values(selectors.instances_list(org))) == [
        dict(r) for r in expected
    ]
    running = next(r for r in expected if r["name"] == "box-running")
    assert running["ssh_command"] == "ssh ubuntu@10.0.0.7" and running["ip"] == "10.0.0.7"


def test_api_list_filters_pages_and_counts_its_queries(org, instances, key_client):
    client = key_client("viewer", organization=org)
    client.get("/api/v1/instances")  # the first call stamps the key's last use
    with QueryCounter() as counted:
        body = client.get("/api/v1/instances?page_size=3").json()
    assert counted.n == 2  # the API key, and the page with the count (selectors.ApiRows)
    assert body["count"] == len(STATES) and len(body["results"]) == 3
    assert [r["name"] for r in body["results"]] == [
        "box-pending",
        "box-provisioning",
        "box-running",
    ]
    body = client.get("/api/v1/instances?status=running&status=stopped").json()
    assert [r["name"] for r in body["results"]] == ["box-running", "box-stopped"]
    assert body["results"][0]["actions"] == allowed_actions("running") != []
    body = client.get("/api/v1/instances?region=us-east-1&instance_type=gpu_1x_h200&name=STOP")
    assert [r["name"] for r in body.json()["results"]] == ["box-stopping", "box-stopped"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_the_unfiltered_api_list_pages_as_the_filtered_one(org, instances, key_client, size):
    """``ApiRows`` (no filter: page and count in one statement) gives every page, the last, and
    the errors exactly as the ORM path does (an empty filter takes it)."""
    client = key_client("viewer", organization=org)
    pages = (len(STATES) + size - 1) // size
    for page in [*(str(n) for n in range(1, pages + 2)), "last", "0", "abc", "1.5"]:
        fast = client.get(f"/api/v1/instances?page_size={size}&page={page}")
        orm = client.get(f"/api/v1/instances?page_size={size}&page={page}&name=")
        assert fast.status_code == orm.status_code, page
        expected = orm.json()
        for link in ("next", "previous"):  # the same links, without the empty filter
            if isinstance(expected, dict) and expected.get(link):
                expected[link] = expected[link].replace("name=&", "").replace("&name=", "")
        assert fast.json() == expected, page
        if page == "1":
            assert fast.json()["count"] == len(STATES)
            assert len(fast.json()["results"]) == min(size, len(STATES))
    assert client.get(f"/api/v1/instances?page_size={size}&page={pages + 1}").status_code == 404
    for page in (1, pages):  # the first and the last (cut to the count): the key, the page
        with QueryCounter() as counted:
            assert client.get(f"/api/v1/instances?page_size={size}&page={page}").status_code == 200
        assert counted.n == 2, page


def test_the_unfiltered_api_list_of_an_organisation_without_instances(org, key_client):
    client = key_client("viewer", organization=org)
    client.get("/api/v1/instances")  # the first call stamps the key's last use
    with QueryCounter() as counted:
        body = client.get("/api/v1/instances").json()
    assert body["count"] == 0 and body["results"] == []
    assert counted.n == 2  # the API key, and the empty first page (nothing to count apart)


def test_page_rows_are_the_polled_row_and_cost_no_query_each(org, owner, instances):
    client = Client()
    client.force_login(owner)
    client.get("/instances/")
    with QueryCounter() as few:
        page = client.get("/instances/").content.decode()
    pending = next(i for i in instances if i.state == "pending")
    in_page = re.search(rf'<tr id="instance-row-{pending.pk}".*?</tr>', page, re.S).group(0)
    polled = client.get(f"/instances/{pending.pk}/row/", HTTP_HX_REQUEST="true")
    assert polled.content.decode().strip() == in_page
    assert f'hx-get="/instances/{pending.pk}/row/"' in in_page and 'class="spinner"' in in_page
    running = next(i for i in instances if i.state == "running")
    row = re.search(rf'<tr id="instance-row-{running.pk}".*?</tr>', page, re.S).group(0)
    assert (
        "hx-get" not in row and "ssh ubuntu@10.0.0.7" in row and "<code>gpu_1x_h200</code>" in row
    )
    assert f'datetime="{running.created_at.isoformat()}"' in row
    Instance.objects.bulk_create(
        Instance(
            organization=org,
            name=f"more-{i}",
            instance_type=running.instance_type,
            region=running.region,
            image=running.image,
            disk_gb=100,
            backend="simulated",
            state="stopped",
        )
        for i in range(15)
    )
    with QueryCounter() as many:
        assert client.get("/instances/").content.decode().count('<tr id="instance-row-') == 22
    assert many.n == few.n


def test_page_rows_escape_what_the_customer_named(org, owner, instances):
    running = next(i for i in instances if i.state == "running")
    Instance.objects.filter(pk=running.pk).update(name="<script>alert(\"x\")</script> & 'q'")
    client = Client()
    client.force_login(owner)
    page = client.get("/instances/").content.decode()
    row = re.search(rf'<tr id="instance-row-{running.pk}".*?</tr>', page, re.S).group(0)
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;"
    assert "<script>" not in page
    assert f">{escaped}</a>" in row  # the link to the instance
    assert f'aria-label="Copy the SSH command for {escaped}"' in row


def test_page_rows_are_the_table_rows_of_the_orm_in_the_models_order(org, instances):
    ordered = list(selectors.instances_table(org).select_related("instance_type", "region"))
    rows = selectors.TableRows(org)[0:25]
    assert [{k: v for k, v in r.items() if k != "total"} for r in rows] == [
        selectors.table_row_of(i) for i in ordered
    ]
    assert {r["total"] for r in rows} == {len(STATES)}
    live = selectors.TableRows(org, ["running", "stopped"])
    assert [r["name"] for r in live[0:1]] == ["box-running"] and live[0:1][0]["total"] == 2
    assert live.count() == 2 and live[5:10] == []


@pytest.mark.parametrize(
    ("number", "more_queries"),
    [
        *[("", 0), ("1", 0), ("3", 0), ("abc", 0), ("2.0", 0), (" 2 ", 0)],  # in range
        *[("0", 1), ("-1", 1), ("9" * 30, 1), ("4", 2)],  # the last page
    ],
)
def test_page_numbers_are_read_as_the_paginator_reads_them(
    org, owner, compute_catalog, number, more_queries
):
    """Whatever ``?page=`` says, the page is the one ``Paginator.get_page`` gives (page 1 for
    what is not a number, the last page for one out of range). A page in range costs one query
    (its rows carry the count); one out of range is counted first, as the paginator does."""
    from django.core.paginator import Paginator

    Instance.objects.bulk_create(
        Instance(
            organization=org,
            name=f"n-{i}",
            instance_type=compute_catalog["one"],
            region=compute_catalog["east"],
            image=compute_catalog["image"],
            disk_gb=100,
            backend="simulated",
            state="stopped",
        )
        for i in range(60)
    )
    client = Client()
    client.force_login(owner)
    client.get("/instances/")
    with QueryCounter() as first:
        client.get("/instances/")
    with QueryCounter() as counted:
        page = client.get("/instances/", {"page": number}).content.decode()
    expected = Paginator(range(60), 25).get_page(number)
    assert f"Page {expected.number} of 3" in page
    assert page.count('<tr id="instance-row-') == len(expected.object_list)
    assert counted.n == first.n + more_queries


def test_the_state_select_is_what_the_forms_widget_writes(org, owner, compute_catalog):
    from django.http import QueryDict

    from portal.compute.forms import InstanceFilterForm

    client = Client()
    client.force_login(owner)
    for query in ["", "state=live", "state=terminated", "page=2", "state=bogus"]:
        page = client.get(f"/instances/?{query}").content.decode()
        select = re.search(r'<select name="state".*?</select>', page, re.S).group(0)
        widget = str(InstanceFilterForm(QueryDict(query) or None)["state"])
        assert re.sub(r"\s+", " ", select) == re.sub(r"\s+", " ", widget), query


def test_row_ages_are_what_timesince_says():
    from django.utils.timesince import timesince

    from portal.compute.presenters import RowContext

    page = RowContext("every 2.5s")
    deltas = [timedelta(seconds=s) for s in (-5, 0, 30, 59, 60, 61, 119, 3599, 3600, 86399)]
    deltas += [
        timedelta(days=d, seconds=s) for d in (6, 7, 13, 27, 28, 29, 31, 366) for s in (0, 59)
    ]
    deltas += [timedelta(days=27, hours=23, minutes=59, seconds=59)]
    for delta in deltas * 2:  # the second time from what the page remembers
        created = page.now - delta
        assert page.age(created) == timesince(created, page.now), delta
