"""A real virtual machine through the libvirt backend: booted under QEMU by a private libvirtd,
seeded by cloud-init NoCloud with the customer's key, logged into over SSH with that key (and
refused with another), stopped and started with the same instance id, and terminated leaving
no domain, disk or seed behind."""

import dataclasses
import shutil
import time

import pytest

from portal.provisioning.base import MachineSpec
from portal.provisioning.base import ObservedState as S
from portal.provisioning.libvirt import LibvirtBackend
from tests.conftest import missing
from tests.provisioning.real_vm import (
    PrivateLibvirtd,
    backend_options,
    build_debian_guest,
    build_tiny_guest,
    missing_parts,
    new_key,
    ssh,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

READY_SECONDS = 90  # boot to SSH under TCG takes 5-10 s alone, more beside the rest of the suite


@pytest.fixture(scope="module")
def libvirtd():
    if lacking := missing_parts():
        missing(f"real VMs need {', '.join(lacking)}")
    daemon = PrivateLibvirtd().start()
    daemon.add_base_image("tiny")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def tiny_guest():
    if missing_parts():
        pytest.skip("see the libvirtd fixture")
    return build_tiny_guest()


def _wait(backend, machine_id, state, daemon, seconds=READY_SECONDS):
    deadline = time.monotonic() + seconds
    status = backend.describe(machine_id)
    while status.state != state:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{machine_id} is {status.state}, not {state}, after {seconds}s; "
                f"console:\n{daemon.console(machine_id)[-3000:]}"
            )
        time.sleep(0.5)
        status = backend.describe(machine_id)
    return status


def test_a_machine_boots_with_the_customers_key_and_nobody_elses(libvirtd, tiny_guest, tmp_path):
    backend = LibvirtBackend(
        **backend_options(
            libvirtd,
            {"tiny": (tiny_guest, "tiny")},
            shutdown_timeout_seconds=2,  # the tiny guest ignores ACPI: stop pulls the plug
        )
    )
    key, public = new_key(tmp_path, "customer")
    other, _ = new_key(tmp_path, "stranger")
    spec = MachineSpec(
        machine_id="inst-vm-1",
        name="Cust VM",
        host_name="local",
        vcpus=1,
        ram_gib=1,
        disk_gb=1,
        image="tiny",
        ssh_public_keys=(public,),
        user_data="#cloud-config\npackages: []\n",
    )

    started = time.monotonic()
    created = backend.create(spec)
    assert created.state in (S.PROVISIONING, S.RUNNING)
    ready = _wait(backend, spec.machine_id, S.RUNNING, libvirtd)
    boot_seconds = time.monotonic() - started
    assert ready.detail["stage"] == "ready"
    target = ready.detail["ssh"]
    assert (target["host"], target["user"]) == ("127.0.0.1", "root")

    login = ssh(key, target["host"], target["port"], "root", "cat /etc/instance-id; hostname")
    assert login.returncode == 0, login.stderr + libvirtd.console(spec.machine_id)[-2000:]
    assert login.stdout.split() == ["inst-vm-1", "cust-vm"]
    refused = ssh(other, target["host"], target["port"], "root", "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    assert backend.stop(spec.machine_id).state == S.STOPPED
    backend.start(spec)
    again = _wait(backend, spec.machine_id, S.RUNNING, libvirtd)
    assert again.detail["ssh"]["port"] == target["port"]  # kept in the domain's metadata
    login = ssh(key, target["host"], target["port"], "root", "cat /etc/instance-id")
    assert login.returncode == 0 and login.stdout.strip() == "inst-vm-1"  # the same instance

    assert backend.terminate(spec.machine_id).state == S.TERMINATED
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    try:
        assert conn.listAllDomains(0) == []
        pool = conn.storagePoolLookupByName("images")
        pool.refresh(0)
        assert sorted(pool.listVolumes()) == ["tiny.qcow2"]  # no disk, no seed left
    finally:
        conn.close()
    print(f"tiny guest: create to SSH-ready in {boot_seconds:.1f} s")


@pytest.fixture(scope="module")
def debian_guest():
    if missing_parts() or not shutil.which("debootstrap"):
        missing("the debian12 guest needs debootstrap (apt-get install debootstrap)")
    return build_debian_guest()


def test_a_debian_guest_runs_real_cloud_init_once_and_phones_home(
    libvirtd, debian_guest, tmp_path, settings, live_server
):
    """The seed as real cloud-init reads it, through the portal: the key goes to the image's
    user, the hostname and instance id are the seed's, the customer's user data runs, root is
    turned away; and with ``readiness="phone_home"`` the instance is running (and billed) only
    once cloud-init has posted to its single-use URL on the portal (the live server, which the
    guest reaches as 10.0.2.2, QEMU's address of the host). Stop and start keeping the instance
    id are shown with the tiny guest: a second boot here would cost another 40 s of emulation."""
    from decimal import Decimal
    from urllib.parse import urlsplit

    from portal.accounts import services as account_services
    from portal.accounts.types import Actor
    from portal.catalog import services as catalog_services
    from portal.catalog.models import Image
    from portal.compute import services
    from portal.compute.lifecycle import State
    from portal.compute.models import Instance, InstanceEvent
    from portal.compute.stages import boot_stages
    from portal.provisioning import reset_backends
    from portal.provisioning.models import PhoneHome
    from tests.factories.compute import World

    libvirtd.add_base_image("debian12", debian_guest / "base.qcow2")
    port = urlsplit(live_server.url).port
    settings.PROVISIONING_PHONE_HOME_URL = f"http://10.0.2.2:{port}"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "10.0.2.2"]
    settings.PROVISIONING_BACKENDS = {
        **settings.PROVISIONING_BACKENDS,
        "libvirt": {
            "BACKEND": "portal.provisioning.libvirt.LibvirtBackend",
            "OPTIONS": backend_options(
                libvirtd,
                {"debian12": (debian_guest, "debian12")},
                shutdown_timeout_seconds=60,
                readiness="phone_home",
                attach_gpus=False,  # the registered GPUs are not real here
            ),
        },
    }
    settings.PROVISIONING_BACKEND = "libvirt"
    settings.COMPUTE_BOOT_DISK_GB = 4
    reset_backends()
    world = World()
    small = catalog_services.instance_type_upsert(
        name="gpu_1x_h200_deb", gpu_model=world.types["gpu_1x_h200"].gpu_model, gpu_count=1,
        mig_profile=None, vcpus=1, ram_gib=1,  # one emulated CPU leaves the other core to the suite
    )[0]  # fmt: skip
    catalog_services.price_set(
        instance_type=small, region=world.region, currency="USD", on_demand_per_hour=Decimal("1")
    )
    Image.objects.create(name="debian12", os="Debian 12")
    key, public = new_key(tmp_path, "customer")
    other, _ = new_key(tmp_path, "stranger")
    ssh_key = account_services.ssh_key_create(actor=Actor.system(world.org), public_key=public)
    request = dataclasses.replace(
        world.request(
            "finetune-01",
            instance_type="gpu_1x_h200_deb",
            user_data="#!/bin/sh\necho from-user-data > /etc/portal-user-data\n",
        ),
        image="debian12",
        ssh_key_ids=(ssh_key.pk,),
    )
    try:
        instance, _ = services.instance_launch(actor=world.actor(), request=request)
        started = time.monotonic()
        deadline = started + 240
        while services.instance_sync(instance_id=instance.pk):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not running after 240 s; console:\n{libvirtd.console(instance.machine_id)[-4000:]}"
                )
            time.sleep(0.5)
        boot_seconds = time.monotonic() - started
        instance.refresh_from_db()
        assert instance.state == State.RUNNING, instance.status_message
        phoned = PhoneHome.objects.get(machine_id=instance.machine_id)
        assert phoned.detail["instance_id"] == instance.machine_id
        assert phoned.detail["hostname"] == "finetune-01"
        events = list(InstanceEvent.objects.filter(instance=instance).order_by("created_at", "id"))
        running = next(e for e in events if e.to_state == State.RUNNING)
        assert phoned.received_at <= running.created_at  # ready (and billed) only after the post
        assert [s.status for s in boot_stages(events, running.created_at).stages] == ["done"] * 3

        host, port, user = instance.ip_address, instance.ssh_port, instance.ssh_user
        assert user == "debian"
        probe = (
            "cloud-init status --wait >/dev/null; cat /var/lib/cloud/data/instance-id; hostname; "
            "cat /etc/portal-user-data; sudo -n cloud-init query instance_id"
        )
        login = ssh(key, host, port, "debian", probe)
        console = libvirtd.console(instance.machine_id)
        assert login.returncode == 0, login.stderr + console[-3000:]
        lines = login.stdout.strip().splitlines()
        assert len(lines) == 4, login.stdout + login.stderr + console[-4000:]
        # the seed's instance id, hostname and user data; and the user may sudo, as on a cloud
        # image
        machine = instance.machine_id
        assert lines == [machine, "finetune-01", "from-user-data", machine]
        assert ssh(other, host, port, "debian", "true").returncode == 255
        as_root = ssh(key, host, port, "root", "true")  # cloud-init turns root away, to the user
        assert as_root.returncode != 0 and 'login as the user "debian"' in as_root.stdout

        services.instance_action(actor=world.actor(), instance_id=instance.pk, action="terminate")
        services.instance_sync(instance_id=instance.pk)
        assert Instance.objects.get(pk=instance.pk).state == State.TERMINATED
    finally:
        reset_backends()
    print(f"debian12 guest: launch to phoned-home and SSH-ready in {boot_seconds:.1f} s")


def _api_wait(api, pk: int, status: str, daemon, seconds: float = READY_SECONDS) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        answer = api.get(f"/api/v1/instances/{pk}").json()
        if answer["status"] == status:
            return answer
        if answer["status"] == "failed" or time.monotonic() > deadline:
            raise AssertionError(
                f"instance {pk} is {answer['status']} ({answer['status_message']}), not {status}; "
                f"console:\n{daemon.console(f'inst-{pk}')[-2000:]}"
            )
        time.sleep(0.5)


def test_a_launch_through_the_api_runs_a_real_machine_the_customer_logs_into(
    libvirtd, tiny_guest, tmp_path, settings
):
    """The whole way: the API launches, the worker's tasks drive the libvirt backend, the
    instance is running once the guest's SSH answers, and its connect details log in with the
    customer's key; stop, start and terminate go the same way."""
    from decimal import Decimal

    from portal.accounts import services as account_services
    from portal.accounts.types import Actor
    from portal.catalog import services as catalog_services
    from portal.catalog.models import Image
    from portal.provisioning import reset_backends
    from tests import factories
    from tests.e2e.helpers import background_worker
    from tests.factories.compute import World

    libvirtd.add_base_image("tiny-guest")
    settings.PROVISIONING_BACKENDS = {
        **settings.PROVISIONING_BACKENDS,
        "libvirt": {
            "BACKEND": "portal.provisioning.libvirt.LibvirtBackend",
            "OPTIONS": backend_options(
                libvirtd,
                {"tiny-guest": (tiny_guest, "tiny")},
                shutdown_timeout_seconds=2,
                attach_gpus=False,  # the registered GPUs are not real here
            ),
        },
    }
    settings.PROVISIONING_BACKEND = "libvirt"
    settings.COMPUTE_BOOT_DISK_GB = 2
    settings.COMPUTE_POLL_SECONDS = 0.5
    reset_backends()
    world = World()
    small = catalog_services.instance_type_upsert(
        name="gpu_1x_h200_lab", gpu_model=world.types["gpu_1x_h200"].gpu_model, gpu_count=1,
        mig_profile=None, vcpus=1, ram_gib=1,
    )[0]  # fmt: skip
    catalog_services.price_set(
        instance_type=small, region=world.region, currency="USD", on_demand_per_hour=Decimal("1")
    )
    Image.objects.create(name="tiny-guest", os="busybox")
    key, public = new_key(tmp_path, "customer")
    other, _ = new_key(tmp_path, "stranger")
    ssh_key = account_services.ssh_key_create(actor=Actor.system(world.org), public_key=public)
    api = factories.api_client_for(world.org, "owner")

    try:
        with background_worker():
            launched = api.post(
                "/api/v1/instances",
                {
                    "name": "cust-vm",
                    "instance_type": "gpu_1x_h200_lab",
                    "region": world.region.code,
                    "image": "tiny-guest",
                    "ssh_key_ids": [ssh_key.pk],
                    "user_data": "#cloud-config\n{}\n",
                },
                format="json",
            )
            assert launched.status_code == 201, launched.content
            pk = launched.json()["id"]
            running = _api_wait(api, pk, "running", libvirtd)
            port, user = running["ssh_port"], running["ssh_user"]
            assert running["ssh_command"] == f"ssh -p {port} root@127.0.0.1"
            login = ssh(key, running["ip"], port, user, "cat /etc/instance-id; hostname")
            assert login.returncode == 0, login.stderr
            assert login.stdout.split() == [f"inst-{pk}", "cust-vm"]
            assert ssh(other, running["ip"], port, user, "true").returncode == 255

            assert api.post(f"/api/v1/instances/{pk}/stop").status_code == 202
            _api_wait(api, pk, "stopped", libvirtd)
            assert api.post(f"/api/v1/instances/{pk}/start").status_code == 202
            again = _api_wait(api, pk, "running", libvirtd)
            login = ssh(key, again["ip"], again["ssh_port"], user, "cat /etc/instance-id")
            assert login.stdout.strip() == f"inst-{pk}"

            assert api.post(f"/api/v1/instances/{pk}/terminate").status_code == 202
            _api_wait(api, pk, "terminated", libvirtd)
    finally:
        reset_backends()
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    try:
        assert conn.listAllDomains(0) == []
        pool = conn.storagePoolLookupByName("images")
        pool.refresh(0)
        assert "tiny-guest.qcow2" in pool.listVolumes()
        assert not [v for v in pool.listVolumes() if v.startswith(f"inst-{pk}")]
    finally:
        conn.close()
