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
    assert counted.n == 3  # the API key, the count and the page
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
