"""The cloud-init NoCloud seed: what cloud-init reads from it, and which user data it takes."""

import io

import pycdlib
import pytest
import yaml
from defusedxml import ElementTree as SafeET

from portal.provisioning.base import MachineSpec
from portal.provisioning.cloud_init import (
    MAX_USER_DATA_BYTES,
    Seed,
    UserDataInvalid,
    hostname_for,
    validate_user_data,
)
from portal.provisioning.libvirt import QEMU_NS, LibvirtBackend

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0gdvGcPbCcYCJdPAnyIqvlgLJMdf3Sp7xKRwUWrYzH ada@laptop"


def read_seed(body: bytes) -> tuple[str, dict[str, bytes]]:
    """The volume label and the files by their Rock Ridge names, as cloud-init sees them."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(body))
    files = {}
    for name in ("meta-data", "user-data"):
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        files[name] = out.getvalue()
    label = iso.pvd.volume_identifier.decode().strip()
    iso.close()
    return label, files


def test_the_seed_carries_the_keys_hostname_and_instance_id():
    label, files = read_seed(Seed("inst-42", "train-01", (KEY,)).iso())
    assert label == "cidata"
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "inst-42",
        "local-hostname": "train-01",
    }
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert yaml.safe_load(files["user-data"]) == {
        "hostname": "train-01",
        "ssh_authorized_keys": [KEY],
    }


def test_customer_user_data_goes_beside_the_portals_part():
    script = "#!/bin/sh\necho 你好 > /etc/motd\n"
    _, files = read_seed(Seed("inst-42", "a", (KEY,), script).iso())
    body = files["user-data"].decode()
    assert body.startswith("Content-Type: multipart/mixed")
    assert "text/cloud-config" in body and "text/x-shellscript" in body
    assert f"- {KEY}" in body  # the portal's part stays readable as it is


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("", ""),
        ("  \n", ""),
        ("#cloud-config\npackages: [htop]\n", "#cloud-config\npackages: [htop]\n"),
        ("#cloud-config\n", "#cloud-config\n"),
        ("#!/bin/bash\r\necho hi\r\n", "#!/bin/bash\necho hi\n"),
    ],
)
def test_user_data_cloud_init_can_run_is_taken(text, kept):
    assert validate_user_data(text) == kept


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("packages: [htop]", "must start with #cloud-config"),
        ("#cloud-config\npackages: [htop\n", "not valid YAML"),
        ("#cloud-config\n- a\n- b\n", "must be a mapping"),
        ("#!/bin/sh\n" + "x" * MAX_USER_DATA_BYTES, "at most 16384 bytes are allowed"),
    ],
)
def test_user_data_cloud_init_would_not_run_is_refused(text, why):
    with pytest.raises(UserDataInvalid, match=why):
        validate_user_data(text)


def test_hostnames_come_from_instance_names():
    assert hostname_for("Cust VM", "inst-1") == "cust-vm"
    assert hostname_for("训练", "inst-1") == "inst-1"
    assert hostname_for("a" * 80, "inst-1") == "a" * 63


def test_the_domain_boots_with_its_seed_and_a_forwarded_ssh_port():
    backend = LibvirtBackend(
        uri_template="test:///default",
        image_dir="/srv/images",
        domain_type="qemu",
        cpu_model="qemu64",
        direct_boot={"tiny": {"kernel": "/k/vmlinuz", "initrd": "/k/initrd.img"}},
        ssh_forward={"address": "127.0.0.1", "first_port": 23000, "last_port": 23099},
    )
    spec = MachineSpec("inst-7", "x", "h", 1, 1, 1, "tiny", ssh_public_keys=(KEY,))
    root = SafeET.fromstring(backend.domain_xml(spec, ssh_port=23004))
    assert root.get("type") == "qemu"
    assert root.findtext("cpu/model") == "qemu64"
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.find("os/boot") is None
    seed = next(d for d in root.findall("devices/disk") if d.find("target").get("dev") == "vdb")
    assert seed.find("source").get("file") == "/srv/images/inst-7-seed.iso"
    assert seed.find("readonly") is not None
    args = [a.get("value") for a in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert "user,id=portalnet0,hostfwd=tcp:127.0.0.1:23004-:22" in args
    assert root.find("devices/interface") is None
