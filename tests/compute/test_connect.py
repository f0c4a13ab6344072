"""Where to log in: the address, port and user the backend reports, as an ``ssh`` command on
the instance page, in the instances table and in the API; the simulated backend's address is
said to be made up."""

import pytest
from django.test import Client

from portal.compute.models import Instance, ssh_command
from portal.compute.services._common import record_observation
from portal.provisioning.base import MachineStatus, ObservedState
from tests import factories


@pytest.fixture
def owner_client(org, owner):
    client = Client()
    client.force_login(owner)
    return client


def test_the_command_names_a_forwarded_port_and_the_images_user():
    assert ssh_command("10.64.0.2", "running") == "ssh ubuntu@10.64.0.2"
    assert ssh_command("127.0.0.1", "running", "root", 23001) == "ssh -p 23001 root@127.0.0.1"
    assert ssh_command("10.0.0.5", "running", "debian", 22) == "ssh debian@10.0.0.5"
    assert ssh_command("10.0.0.5", "stopped", "debian", 22) == ""
    assert ssh_command(None, "running") == ""


def _running(instance: Instance, ssh: dict | None, addresses=()) -> Instance:
    detail = {"ssh": ssh} if ssh else {}
    status = MachineStatus(instance.machine_id, ObservedState.RUNNING, addresses, detail=detail)
    record_observation(instance, status)
    Instance.objects.filter(pk=instance.pk).update(state="running")
    return Instance.objects.get(pk=instance.pk)


def test_the_backends_connect_details_reach_the_page_the_table_and_the_api(
    launch, owner_client, org
):
    instance = _running(launch("cust-vm"), {"host": "127.0.0.1", "port": 23001, "user": "root"})
    assert (instance.ip_address, instance.ssh_port, instance.ssh_user) == (
        "127.0.0.1",
        23001,
        "root",
    )
    command = "ssh -p 23001 root@127.0.0.1"
    assert command in owner_client.get(f"/instances/{instance.pk}/").content.decode()
    assert command in owner_client.get("/instances/").content.decode()
    api = factories.api_client_for(org, "owner")
    listed = api.get("/api/v1/instances").json()["results"][0]
    one = api.get(f"/api/v1/instances/{instance.pk}").json()
    for answer in (listed, one):
        assert (answer["ssh_command"], answer["ssh_port"], answer["ssh_user"]) == (
            command,
            23001,
            "root",
        )


def test_without_connect_details_the_first_address_and_the_default_user(launch, owner_client):
    instance = _running(launch("plain-vm"), None, ("10.64.0.9",))
    page = owner_client.get(f"/instances/{instance.pk}/").content.decode()
    assert "ssh ubuntu@10.64.0.9" in page
    assert 'data-testid="simulated-address"' in page  # the suite's instances are simulated
