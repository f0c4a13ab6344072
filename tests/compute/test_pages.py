"""Instance and volume pages, as a browser without JavaScript and as htmx see them.

Fixtures: a small catalog (one 8 x H200 host in us-east-1; us-west-1 sells the 1-GPU type but
has no host), an organisation with an owner and an SSH key, and the simulated backend with
instant boots, so ``settle`` brings a launched instance to running in the test thread (page
tests run in a transaction, so the sync task enqueued on commit never runs by itself).
"""

import itertools
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from portal.compute import services
from portal.compute.models import Instance, Volume, VolumeState
from tests import factories
from tests.factories import QueryCounter, settle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]
HTMX = {"HTTP_HX_REQUEST": "true"}
POLL = 'hx-trigger="every 2.5s'
TIMES = "\N{MULTIPLICATION SIGN}"
_seq = itertools.count(1)


@pytest.fixture
def owner_client(org, owner):
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def client_for(org):
    """``client_for("viewer")``: the session of a new member with that role."""

    def make(role: str, organization=None) -> Client:
        client = Client()
        client.force_login(factories.member(organization or org, role))
        return client

    return make


def text(response) -> str:
    return response.content.decode()


def launch_data(ssh_key, **overrides) -> dict:
    data = {
        "instance_type": "gpu_1x_h200",
        "region": "us-east-1",
        "image": "ubuntu-cuda",
        "ssh_key_ids": [ssh_key.pk],
        "name": "train-01",
        "volume_id": "",
        "new_volume_gb": "",
        "user_data": "",
    }
    return {**data, **overrides}


# --- permissions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "can_manage"),
    [("owner", True), ("admin", True), ("member", True), ("billing", False), ("viewer", False)],
)
def test_pages_follow_the_permission_matrix(client_for, launch, role, can_manage):
    instance = settle(launch("alpha"))
    client = client_for(role)
    for url in ("/instances/", f"/instances/{instance.pk}/", "/volumes/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert ("Launch an instance" in text(response)) == (can_manage and url == "/instances/")
    detail = text(client.get(f"/instances/{instance.pk}/"))
    assert (f'action="/instances/{instance.pk}/stop/"' in detail) == can_manage
    assert ("Type <code>alpha</code> to terminate it" in detail) == can_manage
    assert ("Create a volume" in text(client.get("/volumes/"))) == can_manage
    assert client.get("/instances/launch/").status_code == (200 if can_manage else 403)
    if not can_manage:
        posts = [
            (f"/instances/{instance.pk}/stop/", {}),
            (f"/instances/{instance.pk}/terminate/", {"confirm_name": "alpha"}),
            (f"/instances/{instance.pk}/rename/", {"name": "beta"}),
            ("/instances/launch/", {"name": "x"}),
            ("/volumes/", {"name": "data", "region": "us-east-1", "size_gb": "10"}),
        ]
        for url, data in posts:
            assert client.post(url, data).status_code == 403, url
        instance.refresh_from_db()
        assert (instance.state, instance.name) == ("running", "alpha")


def test_signed_out_visitors_are_sent_to_log_in(launch):
    instance = launch()
    for url in ("/instances/", f"/instances/{instance.pk}/", "/instances/launch/", "/volumes/"):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_another_organisations_instance_is_404_everywhere(launch, compute_catalog):
    instance = launch("secret")
    other_org = factories.organization()
    client = Client()
    client.force_login(factories.member(other_org, "owner"))
    pk = instance.pk
    assert client.get(f"/instances/{pk}/").status_code == 404
    assert client.get(f"/instances/{pk}/row/", **HTMX).status_code == 404
    assert client.post(f"/instances/{pk}/stop/").status_code == 404
    assert client.post(f"/instances/{pk}/terminate/", {"confirm_name": "secret"}).status_code == 404
    assert client.post(f"/instances/{pk}/rename/", {"name": "mine"}).status_code == 404
    assert "secret" not in text(client.get("/instances/"))
    instance.refresh_from_db()
    assert (instance.state, instance.name) == ("pending", "secret")


# --- launch -------------------------------------------------------------------------------


def test_launch_page_offers_types_with_price_and_availability(owner_client, ssh_key, launch):
    launch(instance_type="gpu_1x_h200")  # one GPU taken: the 8-GPU type no longer fits
    page = text(owner_client.get("/instances/launch/"))
    assert re.search(rf"gpu_1x_h200 — 1{TIMES} H200[^<]* — from 3\.10 USD/h — available now", page)
    assert re.search(rf"gpu_8x_h200 — 8{TIMES} H200[^<]* — 28\.00 USD/h — sold out", page)
    # Preselected: a type available now, its region with most room, the default image, the key.
    assert '<option value="gpu_1x_h200" selected>' in page
    assert re.search(
        r'<option value="us-east-1" selected>us-east-1 — 3\.50 USD/h — 7 available', page
    )
    assert "us-west-1 — 3.10 USD/h — sold out" in page
    assert '<option value="ubuntu-cuda" selected>' in page
    assert f'value="{ssh_key.pk}" id="id_ssh_key_ids_0" checked' in page
    assert "3.50 USD" in page and "2,555.00 USD" in page  # 730 hours


def test_the_catalog_can_link_to_a_preselected_type(owner_client, ssh_key, compute_catalog):
    page = text(owner_client.get("/instances/launch/?type=gpu_8x_h200"))
    assert '<option value="gpu_8x_h200" selected>' in page
    region_select = re.search(r'<select name="region".*?</select>', page, re.S).group(0)
    assert "us-east-1" in region_select and "us-west-1" not in region_select  # not sold there
    assert "28.00 USD" in page and "20,440.00 USD" in page
    assert "1 available now in us-east-1" in page


def test_changing_type_or_region_updates_regions_and_price_with_htmx(
    owner_client, ssh_key, compute_catalog
):
    response = owner_client.get(
        "/instances/launch/",
        {"instance_type": "gpu_8x_h200", "region": "us-west-1"},
        HTTP_HX_TRIGGER_NAME="instance_type",
        **HTMX,
    )
    page = text(response)
    assert page.lstrip().startswith('<div class="field" id="region-field">')
    assert '<option value="us-east-1" selected>' in page and "us-west-1" not in page
    assert 'id="price-summary"' in page and 'hx-swap-oob="true"' in page
    assert "20,440.00 USD" in page

    response = owner_client.get(
        "/instances/launch/",
        {"instance_type": "gpu_1x_h200", "region": "us-west-1"},
        HTTP_HX_TRIGGER_NAME="region",
        **HTMX,
    )
    page = text(response)
    assert page.lstrip().startswith('<section id="price-summary"')
    assert "hx-swap-oob" not in page
    assert "3.10 USD" in page and "2,263.00 USD" in page
    assert "Sold out in us-west-1" in page and "Available now in us-east-1." in page


def test_launch_through_the_page_creates_the_instance(owner_client, org, ssh_key, compute_catalog):
    volume = services.volume_create(
        actor=factories.actor(org, role="owner"), name="datasets", region="us-east-1", size_gb=500
    )
    response = owner_client.post(
        "/instances/launch/",
        launch_data(ssh_key, name="Train-01", volume_id=volume.pk, user_data="#cloud-config\n"),
    )
    instance = Instance.objects.get(organization=org)
    assert response.status_code == 302
    assert response["Location"] == f"/instances/{instance.pk}/"
    assert (instance.name, instance.state, instance.region.code) == (
        "train-01",
        "pending",
        "us-east-1",
    )
    assert instance.image.name == "ubuntu-cuda" and instance.user_data == "#cloud-config\n"
    assert instance.ssh_public_keys == [ssh_key.public_key]
    volume.refresh_from_db()
    assert (volume.state, volume.instance_id) == (VolumeState.IN_USE, instance.pk)
    page = text(owner_client.get(response["Location"]))
    assert "Launching train-01." in page

    # With htmx, the browser is told where to go.
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, name="train-02", new_volume_gb="50"), **HTMX
    )
    second = Instance.objects.get(name="train-02")
    assert response.status_code == 200 and response["HX-Redirect"] == f"/instances/{second.pk}/"
    assert Volume.objects.get(instance=second).size_gb == 50


def test_launch_errors_are_shown_at_their_fields_with_422(
    owner_client, org, ssh_key, compute_catalog
):
    response = owner_client.post("/instances/launch/", launch_data(ssh_key, ssh_key_ids=[]))
    assert response.status_code == 422
    page = text(response)
    assert re.search(
        r'id="ssh-keys-field".*Choose at least one SSH key to log in with\..*</fieldset>',
        page,
        re.S,
    )
    # The naming rule is checked with the other fields; service-side checks land on their
    # field too (here a volume in another region than the launch).
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, name="Not_Valid!", ssh_key_ids=[]), **HTMX
    )
    assert response.status_code == 422
    page = text(response)
    assert page.lstrip().startswith('<form id="launch-form"')
    assert re.search(r'id="id_name_error"><li>Use 1 to 63 lowercase letters', page)
    assert "Choose at least one SSH key" in page
    west_volume = services.volume_create(
        actor=factories.actor(org, role="owner"), name="far", region="us-west-1", size_gb=10
    )
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, volume_id=west_volume.pk), **HTMX
    )
    assert response.status_code == 422
    assert re.search(
        r'id="id_volume_id_error"><li>Volume far is in us-west-1, not us-east-1', text(response)
    )
    # A region where the type is not sold is not even a choice.
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, instance_type="gpu_8x_h200", region="us-west-1")
    )
    assert response.status_code == 422
    assert 'id="id_region_error"><li>Select a valid choice.' in text(response)
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, volume_id=west_volume.pk, new_volume_gb="5")
    )
    assert "not both" in text(response)
    assert not Instance.objects.exists()


def test_capacity_quota_and_name_errors_are_shown_on_the_form(
    owner_client, ssh_key, launch, settings
):
    launch("first")
    response = owner_client.post("/instances/launch/", launch_data(ssh_key, name="first"))
    assert response.status_code == 422
    assert "An instance named &#x27;first&#x27; already exists." in text(response)

    # Fill the host, then ask for one more GPU.
    for i in range(7):
        launch(f"fill-{i}")
    response = owner_client.post("/instances/launch/", launch_data(ssh_key, name="one-more"))
    assert response.status_code == 422
    page = text(response)
    assert 'class="form-error" role="alert"' in page
    assert "No capacity for gpu_1x_h200 in us-east-1 right now." in page

    settings.DEFAULT_GPU_QUOTA = 8
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, name="over", region="us-west-1")
    )
    assert response.status_code == 422
    assert "your quota is 8 and 8 are in use" in text(response)
    assert Instance.objects.count() == 8


def test_capacity_error_links_to_regions_with_room(owner_client, ssh_key, compute_catalog):
    # The host is in us-east-1; us-west-1 sells the type but has no room. Launch there.
    response = owner_client.post(
        "/instances/launch/", launch_data(ssh_key, name="westy", region="us-west-1")
    )
    assert response.status_code == 422
    page = text(response)
    assert (
        "No capacity for gpu_1x_h200 in us-west-1 right now. It is available in us-east-1." in page
    )
    link = re.search(r'<a href="(/instances/launch/\?[^"]+)">gpu_1x_h200 in us-east-1</a>', page)
    assert link, page
    prefilled = text(owner_client.get(link.group(1).replace("&amp;", "&")))
    assert '<option value="us-east-1" selected>' in prefilled
    assert 'value="westy"' in prefilled


def test_without_ssh_keys_the_page_says_how_to_add_one(owner_client, compute_catalog):
    page = text(owner_client.get("/instances/launch/"))
    assert "Your organisation has no SSH keys yet" in page
    assert '<a href="/ssh-keys/">Add an SSH key</a>' in page


# --- list ---------------------------------------------------------------------------------


def row(page: str, instance: Instance) -> str:
    match = re.search(rf'<tr id="instance-row-{instance.pk}".*?</tr>', page, re.S)
    assert match, f"no row for {instance.name}"
    return match.group(0)


def test_only_transitional_rows_poll_and_settled_rows_stop(owner_client, launch):
    pending = launch("pending-one")
    running = settle(launch("running-one"))
    page = text(owner_client.get("/instances/"))
    assert f'hx-get="/instances/{pending.pk}/row/" {POLL}' in row(page, pending)
    assert 'hx-swap="outerHTML"' in row(page, pending)
    assert "hx-trigger" not in row(page, running)
    assert f"ssh ubuntu@{running.ip_address}" in row(page, running)
    assert "state-running" in row(page, running) and "state-pending" in row(page, pending)

    # The row partial keeps polling while pending, and stops once running.
    response = owner_client.get(f"/instances/{pending.pk}/row/", **HTMX)
    assert text(response).lstrip().startswith(f'<tr id="instance-row-{pending.pk}"')
    assert POLL in text(response)
    settle(pending)
    polled = text(owner_client.get(f"/instances/{pending.pk}/row/", **HTMX))
    assert "hx-trigger" not in polled and "state-running" in polled
    assert "<html" not in polled
    # Without htmx the row URL is just the instance's page.
    assert (
        owner_client.get(f"/instances/{pending.pk}/row/")["Location"] == f"/instances/{pending.pk}/"
    )


def make_instances(org, catalog, n: int, state: str = "terminated") -> None:
    """Rows for list tests, straight into the table (no capacity is held by these states)."""
    now = timezone.now()
    Instance.objects.bulk_create(
        Instance(
            organization=org,
            name=f"old-{i}",
            instance_type=catalog["one"],
            region=catalog["east"],
            image=catalog["image"],
            disk_gb=100,
            backend="simulated",
            state=state,
            created_at=now - timedelta(hours=i + 1),
        )
        for i in range(n)
    )


def test_list_filters_by_state_and_paginates(owner_client, org, launch, compute_catalog):
    live = launch("live-one")
    make_instances(org, compute_catalog, 30)
    page = text(owner_client.get("/instances/"))
    assert "live-one" in page and "Page 1 of 2" in page and "31 instances" in page
    assert 'href="?page=2"' in page
    assert "old-29" in text(owner_client.get("/instances/?page=2"))

    page = text(owner_client.get("/instances/", {"state": "live"}))
    assert "live-one" in page and "old-0" not in page and "Page 1 of" not in page
    response = owner_client.get("/instances/", {"state": "terminated", "page": "2"}, **HTMX)
    page = text(response)
    assert page.lstrip().startswith('<section id="instance-table"')
    assert 'href="?state=terminated&amp;page=1"' in page and "live-one" not in page
    assert row(page, Instance.objects.get(name="old-29"))

    services.instance_action(
        actor=factories.actor(org, role="owner"), instance_id=live.pk, action="terminate"
    )
    settle(live)
    page = text(owner_client.get("/instances/", {"state": "live"}))
    assert "No live instances." in page


def test_empty_list_invites_to_launch(owner_client, client_for, compute_catalog):
    page = text(owner_client.get("/instances/"))
    assert "You have no instances yet." in page
    assert '<a class="btn" href="/instances/launch/">Launch an instance</a>' in page
    page = text(client_for("viewer").get("/instances/"))
    assert "You have no instances yet." in page and 'href="/instances/launch/"' not in page


def test_list_query_count_does_not_grow_with_rows(owner_client, org, launch, compute_catalog):
    settle(launch("first"))
    owner_client.get("/instances/")  # warm caches (content types, sessions)
    with QueryCounter() as few:
        assert owner_client.get("/instances/").status_code == 200
    make_instances(org, compute_catalog, 20, state="stopped")
    with QueryCounter() as many:
        page = text(owner_client.get("/instances/"))
    assert page.count('<tr id="instance-row-') == 21
    assert many.n == few.n, (few.n, many.n)


# --- detail, actions, terminate, rename ----------------------------------------------------


def test_detail_shows_specs_state_and_events_but_never_the_host(
    owner_client, launch, compute_catalog
):
    instance = launch("alpha", new_volume_gb=20)
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "<h1>alpha</h1>" in page
    assert "gpu_1x_h200" in page and f"1{TIMES} H200" in page and "ubuntu-cuda" in page
    assert f'hx-get="/instances/{instance.pk}/" {POLL}' in page  # the status panel polls
    assert "alpha-data" in page and "20 GB" in page
    assert "Launch requested" in page
    assert "The IP address and SSH command appear here when the instance is running." in page
    assert compute_catalog["host"].name not in page
    assert '<span class="mono">3.50 USD/h</span>' in page  # its price in force in us-east-1

    # The htmx poll gets the status panel alone; once running it stops polling.
    settle(instance)
    response = owner_client.get(f"/instances/{instance.pk}/", **HTMX)
    panel = text(response)
    assert panel.lstrip().startswith('<section id="instance-status"')
    assert "hx-trigger" not in panel.split(">", 1)[0]
    assert f"ssh ubuntu@{instance.ip_address}" in panel and 'data-copy="ssh-command"' in panel
    assert 'pending</span> → <span class="mono">provisioning' in panel
    assert "The machine is running" in panel
    assert compute_catalog["host"].name not in panel


def test_actions_allowed_in_the_state_are_confirmed_buttons(owner_client, launch):
    instance = settle(launch("alpha"))
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert 'hx-confirm="Stop alpha?' in page and 'hx-confirm="Reboot alpha?' in page
    assert f'action="/instances/{instance.pk}/start/"' not in page  # not allowed while running

    response = owner_client.post(f"/instances/{instance.pk}/stop/", **HTMX)
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith('<section id="instance-status"')
    assert POLL in body and "state-stopping" in body
    assert '<div id="instance-messages" hx-swap-oob="true">' in body and "Stopping alpha." in body
    instance.refresh_from_db()
    assert instance.state == "stopping"

    # Stopping again is refused: the message says why and nothing changes.
    body = text(owner_client.post(f"/instances/{instance.pk}/stop/", **HTMX))
    assert "Cannot stop an instance that is stopping" in body
    settle(instance)
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert 'hx-confirm="Start alpha?' in page and "state-stopped" in page

    # Without htmx: redirect back to the page, which shows the message.
    response = owner_client.post(f"/instances/{instance.pk}/start/")
    assert response.status_code == 302 and response["Location"] == f"/instances/{instance.pk}/"
    assert "Starting alpha." in text(owner_client.get(response["Location"]))
    assert owner_client.post(f"/instances/{instance.pk}/explode/").status_code == 404
    assert owner_client.get(f"/instances/{instance.pk}/stop/").status_code == 405


def test_starting_without_capacity_is_a_message(owner_client, launch):
    instance = settle(launch("alpha"))
    services.instance_action(
        actor=factories.actor(instance.organization, role="owner"),
        instance_id=instance.pk,
        action="stop",
    )
    settle(instance)
    for i in range(8):
        launch(f"fill-{i}")
    body = text(owner_client.post(f"/instances/{instance.pk}/start/", **HTMX))
    assert "No capacity for gpu_1x_h200 in us-east-1 right now." in body
    instance.refresh_from_db()
    assert instance.state == "stopped"


def test_terminate_requires_the_typed_name(owner_client, launch):
    instance = settle(launch("alpha"))
    response = owner_client.post(
        f"/instances/{instance.pk}/terminate/", {"confirm_name": "alph"}, **HTMX
    )
    assert response.status_code == 422
    body = text(response)
    assert "That is not the name; type alpha to confirm." in body
    assert 'aria-invalid="true"' in body
    instance.refresh_from_db()
    assert instance.state == "running"
    response = owner_client.post(f"/instances/{instance.pk}/terminate/", {"confirm_name": ""})
    assert response.status_code == 422  # the whole page, with the error
    assert "<html" in text(response) and "This field is required." in text(response)

    response = owner_client.post(
        f"/instances/{instance.pk}/terminate/", {"confirm_name": "alpha"}, **HTMX
    )
    assert response.status_code == 200
    assert "Terminating alpha." in text(response) and POLL in text(response)
    instance = settle(instance)
    assert instance.state == "terminated"
    page = text(owner_client.get(f"/instances/{instance.pk}/"))
    assert "to terminate it" not in page and "hx-confirm" not in page
    assert "Rename" not in page


def test_rename(owner_client, launch):
    instance = launch("alpha")
    launch("taken")
    response = owner_client.post(f"/instances/{instance.pk}/rename/", {"name": "Bad Name"}, **HTMX)
    assert response.status_code == 422
    assert text(response).lstrip().startswith('<form id="rename-form"')
    assert "Use 1 to 63 lowercase letters" in text(response)
    response = owner_client.post(f"/instances/{instance.pk}/rename/", {"name": "taken"}, **HTMX)
    assert "An instance named &#x27;taken&#x27; already exists." in text(response)
    response = owner_client.post(f"/instances/{instance.pk}/rename/", {"name": "omega"}, **HTMX)
    assert response["HX-Redirect"] == f"/instances/{instance.pk}/"
    instance.refresh_from_db()
    assert instance.name == "omega"
    assert "Renamed alpha to omega." in text(owner_client.get(f"/instances/{instance.pk}/"))


# --- volumes ------------------------------------------------------------------------------


def test_volumes_create_list_and_delete(owner_client, client_for, launch, compute_catalog):
    response = owner_client.post(
        "/volumes/", {"name": "datasets", "region": "us-east-1", "size_gb": "500"}, **HTMX
    )
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith('<div id="volume-panel">')
    assert "Volume datasets created." in body and "500 GB" in body
    response = owner_client.post(
        "/volumes/", {"name": "datasets", "region": "us-east-1", "size_gb": "5"}
    )
    assert response.status_code == 422
    assert re.search(
        r'id="id_name_error"><li>A volume named &#x27;datasets&#x27; already exists', text(response)
    )
    response = owner_client.post("/volumes/", {"name": "x", "region": "mars-1", "size_gb": "0"})
    assert response.status_code == 422
    assert "Select a valid choice." in text(response) and "greater than or equal to 1" in text(
        response
    )

    instance = launch("alpha", new_volume_gb=20)
    page = text(client_for("viewer").get("/volumes/"))
    assert "alpha-data" in page and f'href="/instances/{instance.pk}/">alpha</a>' in page
    assert "Delete" not in page

    attached = Volume.objects.get(name="alpha-data")
    body = text(owner_client.post(f"/volumes/{attached.pk}/delete/", **HTMX))
    assert "Volume alpha-data is attached to alpha; terminate that instance first." in body
    datasets = Volume.objects.get(name="datasets")
    page = text(owner_client.get("/volumes/"))
    assert 'hx-confirm="Delete the volume datasets (500 GB)?' in page
    response = owner_client.post(f"/volumes/{datasets.pk}/delete/")
    assert response.status_code == 302
    datasets.refresh_from_db()
    assert datasets.state == VolumeState.DELETED
    assert "datasets" not in text(owner_client.get("/volumes/")).split("Volumes in", 1)[1]


def test_launch_page_works_with_an_empty_catalog(owner_client, ssh_key):
    response = owner_client.get("/instances/launch/")
    assert response.status_code == 200
    assert "Choose an instance type and a region to see the price." in text(response)
    response = owner_client.post("/instances/launch/", launch_data(ssh_key))
    assert response.status_code == 422 and not Instance.objects.exists()
