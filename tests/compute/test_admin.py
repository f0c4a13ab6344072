"""The compute admin: pages load, instances are read-only, the three operator actions call
their services (the destructive two after a confirmation page), quotas are editable."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from portal.compute.models import BackendOrphan, Instance, InstanceEvent, Quota, Volume
from tests import factories
from tests.factories import settle

# The page tests' catalog, organisation and simulated backend (tests/compute/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]
MODELS = ["instance", "volume", "quota", "backendorphan"]


@pytest.fixture
def operator():
    return factories.user(email="ops@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def fleet(org, launch, compute_catalog):
    """A running instance with a volume, a pending one, a quota and an orphan machine."""
    running = settle(launch("alpha", new_volume_gb=10))
    pending = launch("beta")
    Quota.objects.create(organization=org, max_gpus=12)
    BackendOrphan.objects.create(backend="simulated", machine_id="inst-999", state="running")
    return {"running": running, "pending": pending}


def act(client, action: str, *instances: Instance, **extra):
    return client.post(
        "/admin/compute/instance/",
        {"action": action, "_selected_action": [i.pk for i in instances], **extra},
        follow=True,
    )


def test_every_list_search_and_change_page_loads(staff_client, fleet):
    for model in MODELS:
        response = staff_client.get(f"/admin/compute/{model}/")
        assert response.status_code == 200, model
        objects = list(response.context["cl"].result_list)
        assert objects, f"no {model} rows"
        for obj in objects:
            assert staff_client.get(f"/admin/compute/{model}/{obj.pk}/change/").status_code == 200
        assert staff_client.get(f"/admin/compute/{model}/?q=alpha").status_code == 200


def test_instance_list_shows_placement_and_filters(staff_client, fleet, compute_catalog):
    running = fleet["running"]
    html = staff_client.get("/admin/compute/instance/").content.decode()
    for value in ("alpha", "beta", compute_catalog["host"].name, running.ip_address, "gpu_1x_h200"):
        assert value in html
    response = staff_client.get("/admin/compute/instance/?state__exact=running")
    assert [i.name for i in response.context["cl"].result_list] == ["alpha"]
    response = staff_client.get(f"/admin/compute/instance/?q={running.ip_address}")
    assert [i.name for i in response.context["cl"].result_list] == ["alpha"]
    response = staff_client.get(f"/admin/compute/instance/?host__id__exact={running.host_id}")
    assert {i.name for i in response.context["cl"].result_list} == {"alpha", "beta"}


def test_instance_list_query_count_does_not_grow(staff_client, launch, compute_catalog):
    launch("one")
    staff_client.get("/admin/compute/instance/")
    with factories.QueryCounter() as few:
        staff_client.get("/admin/compute/instance/")
    for i in range(5):
        launch(f"more-{i}")
    with factories.QueryCounter() as many:
        response = staff_client.get("/admin/compute/instance/")
    assert len(response.context["cl"].result_list) == 6
    assert many.n == few.n


def test_instances_and_volumes_are_read_only_with_events_inline(staff_client, fleet):
    running = fleet["running"]
    html = staff_client.get(f"/admin/compute/instance/{running.pk}/change/").content.decode()
    assert "Launch requested" in html and "The machine is running" in html
    assert 'name="name"' not in html and 'name="events-0-reason"' not in html
    assert staff_client.get("/admin/compute/instance/add/").status_code == 403
    response = staff_client.post(
        f"/admin/compute/instance/{running.pk}/change/", {"name": "renamed", "state": "failed"}
    )
    assert response.status_code == 403
    response = staff_client.post(f"/admin/compute/instance/{running.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    volume = Volume.objects.get(instance=running)
    assert staff_client.post(f"/admin/compute/volume/{volume.pk}/delete/").status_code == 403
    assert staff_client.get("/admin/compute/backendorphan/add/").status_code == 403
    running.refresh_from_db()
    assert (running.name, running.state) == ("alpha", "running")


def test_resync_records_the_observation_or_dispatches_again(
    staff_client, fleet, django_capture_on_commit_callbacks
):
    running, pending = fleet["running"], fleet["pending"]
    before = running.observed_at
    with django_capture_on_commit_callbacks() as callbacks:
        response = act(staff_client, "resync", running, pending)
    assert "Re-sync requested: alpha" in response.content.decode()
    running.refresh_from_db()
    pending.refresh_from_db()
    assert running.observed_at > before and running.observed_state == "running"
    assert pending.dispatched_at is not None
    assert len(callbacks) == 1  # the pending one's sync task is sent again
    assert InstanceEvent.objects.filter(reason="Re-sync requested by an operator").count() == 2


def test_force_terminate_asks_first_then_terminates_as_the_operator(staff_client, fleet):
    running = fleet["running"]
    response = act(staff_client, "force_terminate", running)
    html = response.content.decode()
    assert "Force terminate instances" in html and "alpha" in html
    assert 'name="confirm" value="yes"' in html
    running.refresh_from_db()
    assert running.state == "running"  # nothing happened yet

    response = act(staff_client, "force_terminate", running, confirm="yes")
    assert "Force-terminated: alpha" in response.content.decode()
    running.refresh_from_db()
    assert running.state == "terminated" and running.allocation is None
    event = running.events.get(to_state="terminated")
    assert event.actor_label == "operator ops@example.com"
    assert event.reason == "Force-terminated by an operator"
    assert Volume.objects.get(name="alpha-data").state == "available"


def test_mark_failed_asks_first_and_keeps_the_reason(staff_client, fleet):
    pending = fleet["pending"]
    response = act(staff_client, "mark_failed", pending)
    assert "Reason shown to the customer" in response.content.decode()
    response = act(staff_client, "mark_failed", pending, confirm="yes", reason="Host lost power")
    assert "Marked failed: beta" in response.content.decode()
    pending.refresh_from_db()
    assert (pending.state, pending.status_message) == ("failed", "Host lost power")
    assert pending.allocation is None
    assert pending.events.get(to_state="failed").actor_label == "operator ops@example.com"
    from portal.accounts.models import AuditEvent

    audit = AuditEvent.objects.get(action="instance.operator_mark_failed")
    assert audit.details == {"operator": "operator ops@example.com", "reason": "Host lost power"}
    # Already final: the confirmation page says there is nothing to do.
    response = act(staff_client, "mark_failed", pending)
    assert "None of the selected instances is live" in response.content.decode()


def test_view_only_staff_cannot_run_operator_actions(fleet):
    viewer = factories.user(is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(content_type__app_label="compute", codename__startswith="view_")
    )
    client = Client()
    client.force_login(viewer)
    response = client.get("/admin/compute/instance/")
    assert response.status_code == 200
    assert 'value="force_terminate"' not in response.content.decode()
    act(client, "force_terminate", fleet["running"], confirm="yes")
    fleet["running"].refresh_from_db()
    assert fleet["running"].state == "running"


def test_quotas_are_edited_here_total_or_per_gpu_model(staff_client, org, fleet, compute_catalog):
    html = staff_client.get("/admin/compute/quota/").content.decode()
    assert "All GPUs (total)" in html
    model = compute_catalog["one"].gpu_model
    response = staff_client.post(
        "/admin/compute/quota/add/",
        {"organization": org.pk, "gpu_model": model.pk, "max_gpus": 4},
    )
    assert response.status_code == 302
    assert Quota.objects.get(organization=org, gpu_model=model).max_gpus == 4
    # A second total for the same organisation is refused on the form.
    response = staff_client.post(
        "/admin/compute/quota/add/", {"organization": org.pk, "gpu_model": "", "max_gpus": 3}
    )
    assert response.status_code == 200 and response.context["adminform"].form.errors
    total = Quota.objects.get(organization=org, gpu_model=None)
    response = staff_client.post(
        f"/admin/compute/quota/{total.pk}/change/",
        {"organization": org.pk, "gpu_model": "", "max_gpus": 32},
    )
    assert response.status_code == 302
    total.refresh_from_db()
    assert total.max_gpus == 32


def test_operator_audit_rows_name_the_staff_member(staff_client, operator, fleet):
    from portal.accounts.models import AuditEvent

    running = fleet["running"]
    act(staff_client, "force_terminate", running, confirm="yes")
    audit = AuditEvent.objects.get(action="instance.operator_force_terminate")
    assert (audit.actor_user, audit.actor_label) == (operator, "operator ops@example.com")
    assert audit.organization_id == running.organization_id
    assert audit.details == {"operator": "operator ops@example.com"}
