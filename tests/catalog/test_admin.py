"""The catalog admin: every page loads, hosts come from reports, state changes and prices go
through their services (with audit rows), and prices say whether they are in force."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from portal.accounts.models import AuditEvent
from portal.catalog import capacity, services
from portal.catalog.admin import IN_FORCE, SCHEDULED, SUPERSEDED
from portal.catalog.models import (
    Allocation,
    Gpu,
    Host,
    HostState,
    Image,
    InstanceType,
    MigProfile,
    Price,
)
from portal.catalog.reports import MAX_REPORT_BYTES
from portal.catalog.synthetic import H200_MIG_TABLES, H200_REPORT, synthesize_report
from tests import factories

pytestmark = pytest.mark.django_db

H200_UUID = "GPU-acbd8c60-66a2-c5f7-967a-de51ca969cb3"
MODELS = [
    "gpumodel",
    "region",
    "instancetype",
    "price",
    "image",
    "host",
    "gpu",
    "allocation",
    "gpuslotclaim",
]


@pytest.fixture
def operator():
    return factories.user(is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def catalog(make_host, make_type, region):
    """A MIG-enabled 8 x H200 host with a whole-GPU and a MIG allocation (and one released),
    types, a price history and an image."""
    host = make_host(gpu="H200", count=8, name="h200-a")
    whole = make_type("gpu_1x_h200", vcpus=16, ram_gib=128)
    mig = make_type("mig_1g_h200", mig="1g.18gb", vcpus=2, ram_gib=16)
    capacity.allocation_reserve(instance_type=whole, region=region, holder="instance:1")
    capacity.allocation_reserve(instance_type=mig, region=region, holder="instance:2")
    released = capacity.allocation_reserve(instance_type=whole, region=region, holder="instance:3")
    capacity.allocation_release(allocation=released)
    now = timezone.now()
    for days, amount in [(-10, "4.00"), (-1, "3.50"), (5, "3.00")]:
        services.price_set(
            instance_type=whole,
            region=region,
            currency="USD",
            on_demand_per_hour=amount,
            effective_from=now + timedelta(days=days),
            allow_past=True,  # building a price history
        )
    services.price_set(instance_type=mig, region=region, currency="CNY", on_demand_per_hour="0.6")
    image = Image.objects.create(name="ubuntu-24-04-cuda-13", os="Ubuntu 24.04", is_default=True)
    image.instance_types.set([whole, mig])
    return {"host": host, "whole": whole, "mig": mig}


def grow(make_host, make_type, region) -> None:
    """More rows of every kind, for the query-count test."""
    make_host(gpu="H100", count=8, name="h100-b")
    make_host(gpu="L40S", count=4, name="l40s-c", mig=False)
    types = [
        make_type("gpu_2x_h100", gpu="h100-sxm5-80gb", count=2),
        make_type("mig_3g_h200", mig="3g.71gb"),
    ]
    for n, instance_type in enumerate(types):
        capacity.allocation_reserve(instance_type=instance_type, region=region, holder=f"grow:{n}")
        for days in (-3, 3):
            services.price_set(
                instance_type=instance_type,
                region=region,
                currency="USD",
                on_demand_per_hour=f"{n + days + 10}",
                effective_from=timezone.now() + timedelta(days=days),
                allow_past=True,
            )
    Image.objects.create(name="debian-13", os="Debian 13").instance_types.set(types)


# --- pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_catalog_list_search_and_change_page_loads(staff_client, catalog, model):
    response = staff_client.get(f"/admin/catalog/{model}/")
    assert response.status_code == 200
    objects = list(response.context["cl"].result_list)
    assert objects, f"no {model} rows to open"
    for obj in objects[:3]:
        assert staff_client.get(f"/admin/catalog/{model}/{obj.pk}/change/").status_code == 200
    assert staff_client.get(f"/admin/catalog/{model}/?q=h200").status_code == 200


def test_search_finds_gpu_models_by_nvidia_smi_alias_and_hosts_by_gpu_uuid(staff_client, catalog):
    response = staff_client.get("/admin/catalog/gpumodel/?q=HBM3")
    assert [m.code for m in response.context["cl"].result_list] == ["h100-sxm5-80gb"]
    uuid = Gpu.objects.filter(host=catalog["host"]).first().uuid
    response = staff_client.get(f"/admin/catalog/host/?q={uuid}")
    assert [h.name for h in response.context["cl"].result_list] == ["h200-a"]


@pytest.mark.parametrize("model", MODELS)
def test_list_pages_do_not_query_per_row(
    staff_client, catalog, make_host, make_type, region, model
):
    staff_client.get(f"/admin/catalog/{model}/")  # warm the session and content types
    with factories.QueryCounter() as small:
        rows = len(staff_client.get(f"/admin/catalog/{model}/").context["cl"].result_list)
    grow(make_host, make_type, region)
    with factories.QueryCounter() as large:
        more = len(staff_client.get(f"/admin/catalog/{model}/").context["cl"].result_list)
    assert more > rows or model in {"gpumodel", "region"}
    assert large.n == small.n
    assert small.n <= 12


def test_gpu_model_page_lists_its_mig_profiles_read_only(staff_client, catalog):
    model = catalog["whole"].gpu_model
    html = staff_client.get(f"/admin/catalog/gpumodel/{model.pk}/change/").content.decode()
    assert "3g.71gb" in html
    assert "{0,4}:4" in html
    assert "{0}:8" in html
    assert 'name="mig_profiles-0-name"' not in html  # shown, not editable


def test_host_list_counts_gpus_and_whole_free_gpus(staff_client, catalog):
    response = staff_client.get("/admin/catalog/host/")
    (host,) = response.context["cl"].result_list
    # one GPU held whole, one holding a 1g slice: 6 of 8 have no claim at all
    assert (host.gpu_count, host.free_gpu_count) == (8, 6)
    html = staff_client.get(f"/admin/catalog/host/{host.pk}/change/").content.decode()
    assert "instance:1" in html and "instance:2" in html
    assert "instance:3" not in html  # released allocations are not shown on the host
    assert "8/8" in html and "1/8" in html  # claimed slots per GPU


def test_hosts_cannot_be_added_changed_or_deleted_directly(staff_client, catalog):
    host = catalog["host"]
    assert staff_client.get("/admin/catalog/host/add/").status_code == 403
    response = staff_client.post(
        f"/admin/catalog/host/{host.pk}/change/", {"name": "renamed", "vcpus": 1}
    )
    assert response.status_code == 403
    assert (
        staff_client.post(f"/admin/catalog/host/{host.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    host.refresh_from_db()
    assert (host.name, host.vcpus) == ("h200-a", 128)


def test_types_and_regions_are_deactivated_not_deleted_with_their_prices(staff_client, catalog):
    whole = catalog["whole"]
    url = f"/admin/catalog/instancetype/{whole.pk}/delete/"
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    region = whole.prices.first().region
    url = f"/admin/catalog/region/{region.pk}/delete/"
    assert staff_client.post(url, {"post": "yes"}).status_code == 403
    assert whole.prices.count() == 3


def test_allocations_and_claims_are_read_only(staff_client, catalog):
    allocation = Allocation.objects.filter(released_at__isnull=True).first()
    claim = allocation.claims.first()
    assert staff_client.get("/admin/catalog/allocation/add/").status_code == 403
    assert staff_client.get("/admin/catalog/gpuslotclaim/add/").status_code == 403
    for url in [
        f"/admin/catalog/allocation/{allocation.pk}/delete/",
        f"/admin/catalog/gpuslotclaim/{claim.pk}/delete/",
    ]:
        assert staff_client.post(url, {"post": "yes"}).status_code == 403
    assert allocation.claims.filter(pk=claim.pk).exists()
    active = staff_client.get("/admin/catalog/allocation/?active=yes").context["cl"].result_list
    assert sorted(a.holder for a in active) == ["instance:1", "instance:2"]
    released = staff_client.get("/admin/catalog/allocation/?active=no").context["cl"].result_list
    assert [a.holder for a in released] == ["instance:3"]


# --- registering a host from its report -------------------------------------------------------


def upload(report: bytes = b"", mig: bytes | None = None, **fields):
    data = {"name": "h200-real", "vcpus": "16", "ram_gib": "125", "disk_gb": "500", **fields}
    data["report"] = SimpleUploadedFile("report.xml", report or H200_REPORT.read_bytes())
    if mig is not None:
        data["mig_tables"] = SimpleUploadedFile("host.txt", mig)
    return data


def test_changelist_links_to_the_register_view(staff_client, catalog):
    html = staff_client.get("/admin/catalog/host/").content.decode()
    assert 'href="/admin/catalog/host/register/"' in html
    assert "Register host from report" in html
    assert "/admin/catalog/host/add/" not in html
    assert staff_client.get("/admin/catalog/host/register/").status_code == 200


def test_upload_registers_the_real_h200_report(staff_client, operator, gpu_models, region):
    response = staff_client.post(
        "/admin/catalog/host/register/",
        upload(mig=H200_MIG_TABLES.read_bytes(), region=region.pk),
    )
    host = Host.objects.get(name="h200-real")
    assert response.status_code == 302
    assert response.url == f"/admin/catalog/host/{host.pk}/change/"
    (gpu,) = host.gpus.all()
    assert (gpu.uuid, gpu.pci_bus_id, gpu.memory_mib, gpu.mig_enabled) == (
        H200_UUID,
        "00000000:00:06.0",
        143771,
        True,
    )
    assert (host.vcpus, host.ram_gib, host.disk_gb) == (16, 125, 500)
    assert MigProfile.objects.filter(gpu_model=gpu.gpu_model).count() == 7
    event = AuditEvent.objects.get(action="host.register")
    assert (event.actor_user, event.actor_label) == (operator, f"operator {operator.email}")
    page = staff_client.get(response.url).content.decode()
    assert "Registered h200-real in us-east-1: 1 GPU(s) (H200 SXM 141GB), 1 enabled for MIG" in page
    assert H200_UUID in page


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE nvidia_smi_log [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<nvidia_smi_log>&b;</nvidia_smi_log>"""


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        pytest.param(
            {"report": H200_REPORT.read_bytes().replace(b"NVIDIA H200<", b"NVIDIA H900<")},
            "report",
            "is a 'NVIDIA H900', which is not a known GPU model",
            id="unknown-gpu",
        ),
        pytest.param({"report": b"<foo/>"}, "report", "not an nvidia-smi report", id="foo"),
        pytest.param({"report": BOMB}, "report", "forbidden XML features", id="bomb"),
        pytest.param(
            {"report": b"<" * (MAX_REPORT_BYTES + 1)}, "report", "at most 2 MiB", id="too-big"
        ),
        pytest.param(
            {"mig": b"not a MIG table"}, "mig_tables", "No MIG GPU-instance profiles", id="mig"
        ),
        pytest.param({"name": "not a slug!"}, "name", "Enter a valid", id="name"),
        pytest.param({"vcpus": "0"}, "vcpus", "greater than or equal to 1", id="vcpus"),
    ],
)
def test_a_bad_upload_shows_the_error_and_writes_nothing(
    staff_client, gpu_models, region, change, field, message
):
    report = change.pop("report", b"")
    response = staff_client.post(
        "/admin/catalog/host/register/", upload(report, region=region.pk, **change)
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert message in " ".join(errors[field]), errors
    assert message.split("'")[0] in response.content.decode()
    assert not Host.objects.exists()
    assert not Gpu.objects.exists()
    assert not MigProfile.objects.exists()
    assert not AuditEvent.objects.exists()


def test_registering_the_same_gpus_twice_is_refused_on_the_form(staff_client, gpu_models, region):
    staff_client.post("/admin/catalog/host/register/", upload(region=region.pk))
    response = staff_client.post(
        "/admin/catalog/host/register/", upload(region=region.pk, name="h200-other")
    )
    assert response.context["form"].errors["report"] == [
        f"GPU {H200_UUID} is already registered on host h200-real."
    ]
    response = staff_client.post("/admin/catalog/host/register/", upload(region=region.pk))
    assert response.context["form"].errors["name"] == [
        "A host named 'h200-real' is already registered."
    ]
    assert list(Host.objects.values_list("name", flat=True)) == ["h200-real"]


def test_view_only_staff_cannot_register_or_change_state(catalog):
    viewer = factories.user(is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(content_type__app_label="catalog", codename__startswith="view_")
    )
    client = Client()
    client.force_login(viewer)
    response = client.get("/admin/catalog/host/")
    assert response.status_code == 200
    assert "Register host from report" not in response.content.decode()
    assert 'value="drain"' not in response.content.decode()
    assert client.get("/admin/catalog/host/register/").status_code == 403
    response = client.post(
        "/admin/catalog/host/",
        {"action": "drain", "_selected_action": [catalog["host"].pk]},
    )
    catalog["host"].refresh_from_db()
    assert catalog["host"].state == HostState.ACTIVE
    assert client.get("/admin/catalog/price/add/").status_code == 403


# --- host state -------------------------------------------------------------------------------


def act(client, action: str, *hosts: Host):
    return client.post(
        "/admin/catalog/host/",
        {"action": action, "_selected_action": [h.pk for h in hosts]},
        follow=True,
    )


def test_drain_and_activate_change_state_and_write_audit_rows(staff_client, operator, catalog):
    host = catalog["host"]
    response = act(staff_client, "drain", host)
    host.refresh_from_db()
    assert host.state == HostState.DRAINING
    assert "Draining: h200-a." in response.content.decode()

    act(staff_client, "drain", host)  # already draining: no second audit row
    act(staff_client, "activate", host)
    host.refresh_from_db()
    assert host.state == HostState.ACTIVE

    events = list(AuditEvent.objects.filter(action="host.set_state").order_by("created_at", "id"))
    assert [e.details for e in events] == [
        {"from": "active", "to": "draining"},
        {"from": "draining", "to": "active"},
    ]
    for event in events:
        assert (event.actor_user, event.actor_label) == (operator, f"operator {operator.email}")
        assert (event.target_type, event.target_id) == ("Host", str(host.pk))
        assert event.ip_address == "127.0.0.1"
        assert event.organization is None


def test_a_draining_host_takes_no_new_instances(staff_client, catalog, region):
    act(staff_client, "drain", catalog["host"])
    assert capacity.availability([catalog["whole"]])[catalog["whole"].pk] == {}


def test_take_offline_warns_about_active_allocations_and_works_from_the_change_page(
    staff_client, catalog
):
    host = catalog["host"]
    response = staff_client.post(
        f"/admin/catalog/host/{host.pk}/change/",
        {"CHANGE_FORM-action": "take_offline", "_selected_action": [host.pk]},
        follow=True,
    )
    host.refresh_from_db()
    assert host.state == HostState.OFFLINE
    html = response.content.decode()
    assert "Taken offline: h200-a." in html
    assert "Host h200-a still holds 2 active allocation(s)" in html
    assert AuditEvent.objects.get(action="host.set_state").details == {
        "from": "active",
        "to": "offline",
    }


# --- GPUs: MIG on or off ----------------------------------------------------------------------


def test_mig_can_be_switched_only_on_idle_gpus(staff_client, operator, catalog, make_host):
    gpus = {g.index: g for g in Gpu.objects.filter(host=catalog["host"])}
    busy = [g for g in gpus.values() if g.claims.exists()]
    idle = next(g for g in gpus.values() if not g.claims.exists())
    response = staff_client.post(
        "/admin/catalog/gpu/",
        {"action": "disable_mig", "_selected_action": [idle.pk, *(g.pk for g in busy)]},
        follow=True,
    )
    html = response.content.decode()
    assert "1 GPU(s) are now sold as whole GPUs only." in html
    assert html.count("drain its host and wait") == 2
    assert list(Gpu.objects.filter(mig_enabled=False).values_list("pk", flat=True)) == [idle.pk]
    event = AuditEvent.objects.get(action="gpu.set_mig")
    assert event.details["mig_enabled"] is False
    assert event.actor_label == f"operator {operator.email}"

    l40s = make_host(gpu="L40S", count=1, mig=False).gpus.get()
    response = staff_client.post(
        "/admin/catalog/gpu/",
        {"action": "enable_mig", "_selected_action": [l40s.pk, idle.pk]},
        follow=True,
    )
    assert "L40S PCIe 48GB has no MIG profiles" in response.content.decode()
    assert set(Gpu.objects.filter(mig_enabled=False).values_list("pk", flat=True)) == {l40s.pk}


# --- prices -----------------------------------------------------------------------------------


def price_form(instance_type, region, amount="2.50", **more):
    return {
        "instance_type": instance_type.pk,
        "region": region.pk,
        "currency": "USD",
        "on_demand_per_hour": amount,
        "spot_per_hour": "",
        "effective_from_0": "",
        "effective_from_1": "",
        **more,
    }


def test_adding_a_price_calls_price_set(staff_client, operator, make_type, region):
    instance_type = make_type("gpu_1x_h200")
    html = staff_client.get(f"/admin/catalog/price/add/?instance_type={instance_type.pk}")
    assert html.status_code == 200
    assert f'<option value="{instance_type.pk}" selected>' in html.content.decode()

    response = staff_client.post(
        "/admin/catalog/price/add/",
        price_form(instance_type, region, "2.50", spot_per_hour="1.25"),
        follow=True,
    )
    price = Price.objects.get()
    assert (price.on_demand_per_hour, price.spot_per_hour, price.currency) == (
        Decimal("2.50"),
        Decimal("1.25"),
        "USD",
    )
    assert response.redirect_chain[-1][0] == "/admin/catalog/price/"
    assert "added (in force)" in response.content.decode()
    event = AuditEvent.objects.get(action="price.set")
    assert (event.target_id, event.actor_label) == (str(price.pk), f"operator {operator.email}")
    assert event.details["on_demand"] == "2.50"

    response = staff_client.post(
        "/admin/catalog/price/add/", price_form(instance_type, region, "2.5"), follow=True
    )
    assert Price.objects.count() == 2  # spot differs (none now): a new row
    response = staff_client.post(
        "/admin/catalog/price/add/", price_form(instance_type, region, "2.5"), follow=True
    )
    assert Price.objects.count() == 2
    assert (
        "The price at that time is already gpu_1x_h200 us-east-1 2.500000 USD/h; nothing"
        in response.content.decode()
    )


@pytest.mark.parametrize(
    ("amount", "spot", "message"),
    [
        ("0", "", "must be positive, not 0."),
        ("-1.5", "", "must be positive, not -1.5."),
        ("2.50", "-1", "The spot price of gpu_1x_h200 in us-east-1 must be positive"),
        ("1.1234567", "", "Prices have at most 6 decimal places."),
    ],
)
def test_a_price_price_set_refuses_is_shown_on_the_form(
    staff_client, make_type, region, amount, spot, message
):
    instance_type = make_type("gpu_1x_h200")
    response = staff_client.post(
        "/admin/catalog/price/add/",
        price_form(instance_type, region, amount, spot_per_hour=spot),
    )
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].non_field_errors())
    assert message in response.content.decode()
    assert not Price.objects.exists()
    assert not AuditEvent.objects.exists()


def test_price_times_are_scheduled_or_refused_when_in_the_past(staff_client, make_type, region):
    instance_type = make_type("gpu_1x_h200")
    with time_machine.travel(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), tick=False):
        past = price_form(
            instance_type, region, effective_from_0="2026-03-01", effective_from_1="12:00:00"
        )
        response = staff_client.post("/admin/catalog/price/add/", past)
        assert "A price cannot start in the past." in " ".join(
            response.context["form"].errors["effective_from"]
        )
        future = price_form(
            instance_type, region, effective_from_0="2026-04-01", effective_from_1="00:00:00"
        )
        response = staff_client.post("/admin/catalog/price/add/", future, follow=True)
        assert "added (scheduled)" in response.content.decode()
        assert Price.objects.get().effective_from == datetime(2026, 4, 1, tzinfo=UTC)
        future["on_demand_per_hour"] = "9.99"  # same moment, another amount
        response = staff_client.post("/admin/catalog/price/add/", future)
        assert "starts at exactly that moment" in " ".join(
            response.context["form"].errors["effective_from"]
        )
        assert Price.objects.count() == 1


def test_prices_are_append_only(staff_client, catalog):
    price = Price.objects.first()
    url = f"/admin/catalog/price/{price.pk}/"
    assert staff_client.post(url + "change/", {"on_demand_per_hour": "0.01"}).status_code == 403
    assert staff_client.post(url + "delete/", {"post": "yes"}).status_code == 403
    price.refresh_from_db()
    assert price.on_demand_per_hour != Decimal("0.01")
    html = staff_client.get("/admin/catalog/price/").content.decode()
    assert "delete_selected" not in html


def test_price_status_says_scheduled_in_force_or_superseded(staff_client, make_type, region):
    whole, mig = make_type("gpu_1x_h200"), make_type("gpu_2x_h200", count=2)
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def add(instance_type, days, amount, currency="USD"):
        price, _ = services.price_set(
            instance_type=instance_type,
            region=region,
            currency=currency,
            on_demand_per_hour=amount,
            effective_from=t0 + timedelta(days=days),
            allow_past=True,  # building a price history
        )
        return price.pk

    old, current, future = add(whole, -2, "4"), add(whole, -1, "3.5"), add(whole, 1, "3")
    cny = add(whole, -3, "3.2", "CNY")  # another currency has its own history
    other = add(mig, -5, "7")  # another type too

    def statuses() -> dict[int, str]:
        response = staff_client.get("/admin/catalog/price/")
        return {p.pk: p.price_status for p in response.context["cl"].result_list}

    def filtered(status: str) -> set[int]:
        response = staff_client.get(f"/admin/catalog/price/?status={status}")
        return {p.pk for p in response.context["cl"].result_list}

    with time_machine.travel(t0, tick=False):
        assert statuses() == {
            old: SUPERSEDED,
            current: IN_FORCE,
            future: SCHEDULED,
            cny: IN_FORCE,
            other: IN_FORCE,
        }
        assert filtered("scheduled") == {future}
        assert filtered("superseded") == {old}
        html = staff_client.get(f"/admin/catalog/instancetype/{whole.pk}/change/").content
        assert html.decode().count("superseded") == 1
        assert "scheduled" in html.decode()
    with time_machine.travel(t0 + timedelta(days=1), tick=False):  # the change takes effect
        assert statuses()[current] == SUPERSEDED
        assert statuses()[future] == IN_FORCE
        assert filtered("in force") == {future, cny, other}


# --- instance types and images ----------------------------------------------------------------


def type_form(gpu_model, **more):
    return {
        "name": "custom_type",
        "description": "",
        "gpu_model": gpu_model.pk,
        "gpu_count": "1",
        "mig_profile": "",
        "vcpus": "8",
        "ram_gib": "64",
        "local_nvme_gb": "0",
        "interconnect": "pcie",
        "spot_allowed": "",
        "is_active": "on",
        "provider": "",
        "provider_name": "",
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": "0",
        **more,
    }


def test_instance_type_form_checks_mig_profile_rules(staff_client, catalog, gpu_models):
    h100 = gpu_models["h100-sxm5-80gb"]
    h200_slice = MigProfile.objects.get(gpu_model__code="h200-sxm-141gb", name="1g.18gb")
    response = staff_client.post(
        "/admin/catalog/instancetype/add/", type_form(h100, mig_profile=h200_slice.pk)
    )
    errors = response.context["adminform"].form.errors
    assert errors["mig_profile"] == ["H200 1g.18gb is not a MIG profile of H100 SXM5 80GB."]
    h200 = gpu_models["h200-sxm-141gb"]
    response = staff_client.post(
        "/admin/catalog/instancetype/add/",
        type_form(h200, mig_profile=h200_slice.pk, gpu_count="2"),
    )
    assert response.context["adminform"].form.errors["gpu_count"] == [
        "A MIG slice type has exactly 1 GPU."
    ]
    assert not InstanceType.objects.filter(name="custom_type").exists()
    response = staff_client.post(
        "/admin/catalog/instancetype/add/", type_form(h200, mig_profile=h200_slice.pk)
    )
    assert response.status_code == 302
    assert InstanceType.objects.get(name="custom_type").mig_profile == h200_slice


def test_only_one_image_is_the_default(staff_client, catalog):
    response = staff_client.post(
        "/admin/catalog/image/add/",
        {"name": "rocky-9", "os": "Rocky 9", "frameworks": "[]", "is_default": "on"},
    )
    assert response.context["adminform"].form.errors["is_default"] == [
        "ubuntu-24-04-cuda-13 is the default image; untick it there first."
    ]
    assert not Image.objects.filter(name="rocky-9").exists()


def test_synthetic_hosts_register_through_the_upload_too(staff_client, gpu_models, region):
    report = synthesize_report(gpu="A100", count=4, seed="admin")
    response = staff_client.post(
        "/admin/catalog/host/register/",
        upload(report, name="a100-node", region=region.pk, disk_gb=""),
    )
    assert response.status_code == 302
    host = Host.objects.get(name="a100-node")
    assert host.disk_gb == 0
    assert host.gpus.count() == 4
    assert not host.gpus.filter(mig_enabled=True).exists()  # no MIG tables uploaded
