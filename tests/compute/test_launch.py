"""Launch: validation, quota, capacity errors, idempotency, the API, and concurrency."""

import pytest

from portal.catalog.capacity import CapacityUnavailable
from portal.catalog.models import GpuSlotClaim
from portal.compute import services
from portal.compute.models import IdempotencyRecord, Instance, Quota
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests import factories
from tests.concurrency import at_once
from tests.factories import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _on_the_memory_backend(memory_backend):
    """Every test here runs instances on the in-memory backend (tests/conftest.py)."""


@pytest.fixture
def world():
    return World()


def launch(world, **kwargs):
    return services.instance_launch(actor=world.actor(), request=world.request(**kwargs))[0]


def test_launch_writes_instance_allocation_event_audit_and_enqueues_on_commit(
    world, django_capture_on_commit_callbacks
):
    from portal.accounts.models import AuditEvent
    from portal.catalog import cache as catalog_cache

    with django_capture_on_commit_callbacks() as callbacks:
        instance = launch(world)
    # the sync task, after commit (and the catalog version's second bump: the reservation)
    assert len([c for c in callbacks if c is not catalog_cache.bump]) == 1
    assert len(callbacks) == 2
    assert instance.state == "pending" and instance.backend == "memory"
    assert instance.allocation.holder == f"instance:{instance.pk}"
    assert GpuSlotClaim.objects.count() == 8
    assert instance.ssh_public_keys == [world.ssh_key.public_key]
    assert AuditEvent.objects.filter(action="instance.launch", target_id=str(instance.pk)).exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Bad Name!"}, "name"),
        ({"instance_type": "nope"}, "instance_type"),
        ({"region": "mars-1"}, "region"),
        ({"image": "windows-95"}, "image"),
        ({"ssh_key_ids": ()}, "ssh_key_ids"),
        ({"ssh_key_ids": (999999,)}, "ssh_key_ids"),
        ({"volume_ids": (999999,)}, "volume_ids"),
        ({"new_volume_gb": 0}, "new_volume_gb"),
        ({"user_data": "x" * 20000}, "user_data"),
        ({"user_data": "apt-get install -y htop"}, "user_data"),  # neither cloud-config nor #!
        ({"user_data": "#cloud-config\npackages: [htop\n"}, "user_data"),  # not YAML
    ],
)
def test_bad_launch_requests_name_the_field_and_write_nothing(world, change, field):
    request = world.request()
    request = request.__class__(**{**request.__dict__, **change})
    with pytest.raises(InvalidInput) as caught:
        services.instance_launch(actor=world.actor(), request=request)
    assert field in caught.value.details
    assert not Instance.objects.exists() and not GpuSlotClaim.objects.exists()


def test_a_type_without_a_price_in_the_organizations_currency_is_not_sold(world):
    world.org.currency = "CNY"
    world.org.save()
    with pytest.raises(InvalidInput) as caught:
        launch(world)
    assert "not sold in us-east-1 in CNY" in caught.value.details["instance_type"]


def test_viewers_and_billing_cannot_launch(world):
    for role in ("viewer", "billing"):
        with pytest.raises(PermissionDenied):
            services.instance_launch(actor=world.actor(role), request=world.request(f"by-{role}"))


def test_names_are_unique_among_live_instances(world):
    launch(world)
    with pytest.raises(Conflict) as caught:
        launch(world)
    assert caught.value.code == "name_taken"


def test_quota_in_total_and_per_model_says_limit_and_use(world, settings):
    settings.DEFAULT_GPU_QUOTA = 3
    launch(world, name="a", instance_type="gpu_2x_h200")
    with pytest.raises(services.QuotaExceeded) as caught:
        launch(world, name="b", instance_type="gpu_2x_h200")
    assert caught.value.code == "quota_exceeded"
    assert caught.value.details == {"limit": 3, "in_use": "2", "requested": "2", "gpu_model": None}
    launch(world, name="c", instance_type="mig_1g_18gb")  # a 1/7 slice still fits
    settings.DEFAULT_GPU_QUOTA = 10
    Quota.objects.create(
        organization=world.org, gpu_model=world.types["gpu_1x_h200"].gpu_model, max_gpus=2
    )
    with pytest.raises(services.QuotaExceeded) as caught:
        launch(world, name="d", instance_type="gpu_1x_h200")
    assert caught.value.details["gpu_model"] == "h200-sxm-141gb"
    assert "your quota is 2" in caught.value.message


def test_no_capacity_names_other_regions_and_similar_types(world):
    other = World(region_code="eu-west-1")
    launch(world, name="big", instance_type="gpu_8x_h200")
    with pytest.raises(CapacityUnavailable) as caught:
        launch(world, name="more", instance_type="gpu_1x_h200")
    details = caught.value.details
    assert details["regions_with_capacity"] == ["eu-west-1"]
    assert details["similar_types_available_here"] == []
    assert not Instance.objects.filter(name="more").exists()
    assert other.region.code in caught.value.message


def test_idempotency_key_returns_the_same_instance_or_refuses_another_body(world):
    first, created = services.instance_launch(
        actor=world.actor(), request=world.request(), idempotency_key="k1"
    )
    again, created_again = services.instance_launch(
        actor=world.actor(), request=world.request(), idempotency_key="k1"
    )
    assert created and not created_again and again.pk == first.pk
    with pytest.raises(Conflict) as caught:
        services.instance_launch(
            actor=world.actor(), request=world.request(name="other"), idempotency_key="k1"
        )
    assert caught.value.code == "idempotency_key_reused"
    assert Instance.objects.count() == 1 and IdempotencyRecord.objects.count() == 1


# --- API --------------------------------------------------------------------------------------


def api_body(world, **extra):
    return {
        "name": "api-box",
        "instance_type": "gpu_1x_h200",
        "region": world.region.code,
        "ssh_key_ids": [world.ssh_key.pk],
        **extra,
    }


def test_api_launch_list_get_rename_act_and_events(world, key_client):
    client = key_client("member", organization=world.org)
    response = client.post("/api/v1/instances", api_body(world), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert {"id", "name", "status", "instance_type", "region", "ip", "created_at"} <= set(body)
    assert (body["status"], body["instance_type"], body["region"]) == (
        "pending",
        "gpu_1x_h200",
        "us-east-1",
    )
    pk = body["id"]
    services.instance_sync(instance_id=pk)
    got = client.get(f"/api/v1/instances/{pk}").json()
    assert got["status"] == "running" and got["ip"] and got["ssh_command"].startswith("ssh ")
    assert got["actions"] == ["stop", "reboot", "terminate"]
    assert (
        client.patch(f"/api/v1/instances/{pk}", {"name": "renamed"}, format="json").json()["name"]
        == "renamed"
    )
    assert (
        client.post(f"/api/v1/instances/{pk}/start").json()["error"]["code"] == "invalid_transition"
    )
    response = client.post(f"/api/v1/instances/{pk}/stop")
    assert response.status_code == 202 and response.json()["status"] == "stopping"
    events = client.get(f"/api/v1/instances/{pk}/events").json()["results"]
    assert [e["to_state"] for e in events] == ["pending", "provisioning", "running", "", "stopping"]
    listed = client.get("/api/v1/instances?status=stopping").json()
    assert [i["id"] for i in listed["results"]] == [pk]


def test_api_idempotency_key_header(world, key_client):
    client = key_client("member", organization=world.org)
    headers = {"HTTP_IDEMPOTENCY_KEY": "launch-123"}
    first = client.post("/api/v1/instances", api_body(world), format="json", **headers)
    second = client.post("/api/v1/instances", api_body(world), format="json", **headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    third = client.post(
        "/api/v1/instances", api_body(world, name="other"), format="json", **headers
    )
    assert third.status_code == 409 and third.json()["error"]["code"] == "idempotency_key_reused"


def test_api_errors_have_codes_and_details(world, key_client, settings):
    client = key_client("member", organization=world.org)
    response = client.post(
        "/api/v1/instances", api_body(world, instance_type="nope"), format="json"
    )
    assert response.status_code == 400 and "instance_type" in response.json()["error"]["details"]
    response = client.post("/api/v1/instances", {"name": "x"}, format="json")
    assert response.status_code == 400 and "ssh_key_ids" in response.json()["error"]["details"]
    settings.DEFAULT_GPU_QUOTA = 0
    response = client.post("/api/v1/instances", api_body(world), format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "quota_exceeded"
    settings.DEFAULT_GPU_QUOTA = 16
    viewer = key_client("viewer", organization=world.org)
    assert viewer.post("/api/v1/instances", api_body(world), format="json").status_code == 403
    other = factories.organization()
    stranger = key_client("owner", organization=other)
    instance = launch(world)
    assert stranger.get(f"/api/v1/instances/{instance.pk}").status_code == 404
    assert stranger.post(f"/api/v1/instances/{instance.pk}/terminate").status_code == 404


def test_api_volumes(world, key_client):
    client = key_client("member", organization=world.org)
    created = client.post(
        "/api/v1/volumes", {"name": "data", "region": "us-east-1", "size_gb": 100}, format="json"
    )
    assert created.status_code == 201
    volume_id = created.json()["id"]
    instance = launch(world, volume_ids=(volume_id,))
    response = client.delete(f"/api/v1/volumes/{volume_id}")
    assert response.status_code == 409 and response.json()["error"]["code"] == "volume_in_use"
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    services.instance_sync(instance_id=instance.pk)
    assert client.delete(f"/api/v1/volumes/{volume_id}").status_code == 204
    assert client.get("/api/v1/volumes").json()["count"] == 0


def test_api_instances_list_query_count_does_not_grow(world, key_client):
    client = key_client("member", organization=world.org)
    launch(world, name="first")
    client.get("/api/v1/instances")

    def count():
        with factories.QueryCounter() as counted:
            assert client.get("/api/v1/instances").status_code == 200
        return counted.n

    before = count()
    for i in range(5):
        launch(world, name=f"more-{i}", instance_type="mig_1g_18gb")
    assert count() == before


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_40_launches_at_once_for_10_gpus_give_10_instances(require_postgres, settings):
    settings.DEFAULT_GPU_QUOTA = 100
    world = World(hosts=2, gpus_per_host=5)
    actor = world.actor()
    outcomes = at_once(
        40, lambda i: services.instance_launch(actor=actor, request=world.request(name=f"race-{i}"))
    )
    assert outcomes.count("ok") == 10 and outcomes.count("capacity_unavailable") == 30, outcomes
    claims = list(GpuSlotClaim.objects.values_list("gpu_id", "slot"))
    assert len(claims) == len(set(claims)) == 80
    allocated = [
        i.allocation.gpu_slots[0]["gpu"] for i in Instance.objects.select_related("allocation")
    ]
    assert len(allocated) == len(set(allocated)) == 10


def test_an_organization_with_instances_or_volumes_cannot_be_closed(world):
    from portal.accounts import services as account_services

    instance = launch(world)
    with pytest.raises(Conflict) as caught:
        account_services.organization_delete(actor=world.actor(), confirm_slug=world.org.slug)
    assert caught.value.code == "organization_not_empty"
    assert caught.value.details == {"instances": 1, "volumes": 0}
    services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
    services.instance_sync(instance_id=instance.pk)
    account_services.organization_delete(actor=world.actor(), confirm_slug=world.org.slug)
    world.org.refresh_from_db()
    assert world.org.deleted_at is not None
    assert Instance.objects.filter(organization=world.org).count() == 1  # history kept


def test_api_refuses_ids_too_large_for_the_database(world, key_client):
    client = key_client("member", organization=world.org)
    response = client.post("/api/v1/instances", api_body(world, ssh_key_ids=[2**70]), format="json")
    assert response.status_code == 400 and "ssh_key_ids" in response.json()["error"]["details"]
