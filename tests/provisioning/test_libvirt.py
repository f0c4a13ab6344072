"""The libvirt backend, against libvirt's in-process test:///default driver.

The test driver's state lives as long as a connection to it is open (the session-scoped ``conn``
fixture keeps one), so every test uses fresh machine ids and terminates what it made. Its
default storage pool is /default-pool, which is our image_dir.
"""

import ipaddress
import sys
import time

import pytest
from defusedxml import ElementTree as SafeET

from portal.provisioning import libvirt as libvirt_backend
from portal.provisioning import phone_home
from portal.provisioning.base import (
    CapacityError,
    ObservedState,
    PermanentBackendError,
    TransientBackendError,
)
from portal.provisioning.libvirt import (
    NS,
    DefinedMachine,
    LibvirtBackend,
    PciAddress,
    translate_error,
)
from portal.provisioning.models import LibvirtPlacement
from tests.conftest import missing
from tests.factories.provisioning import gpu, spec

S = ObservedState
URI = "test:///default"
POOL = "/default-pool"
# libvirt's test driver cannot upload a seed volume, and its domains run without a guest
# that could answer SSH: tests/provisioning/test_real_vm.py covers both with QEMU.
TEST_DRIVER = {"seed": False, "readiness": "libvirt"}


@pytest.fixture(scope="session")
def lv():
    try:
        import libvirt
    except ImportError:
        missing(
            "libvirt-python is not installed (apt-get install libvirt-dev pkg-config; scripts/test.sh then installs it)"
        )
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


@pytest.fixture(scope="session")
def conn(lv):
    """Held open for the session: the test driver frees its state when its last connection
    closes, and the backend opens and closes a connection per call."""
    connection = lv.open(URI)
    yield connection
    connection.close()


@pytest.fixture
def made(db, conn):
    """Machine ids a test created; terminated afterwards so the shared driver stays clean."""
    ids: list[str] = []
    yield ids
    cleanup = LibvirtBackend(
        uri_template=URI,
        image_dir=POOL,
        shutdown_timeout_seconds=0,
        seed=False,
        readiness="libvirt",
    )
    for machine_id in ids:
        cleanup.terminate(machine_id)


@pytest.fixture
def backend(lv, made):
    return LibvirtBackend(
        uri_template=URI,
        shutdown_timeout_seconds=0.05,
        image_dir=POOL,
        **TEST_DRIVER,
    )


def new_spec(made, **overrides):
    overrides.setdefault("disk_gb", 2)  # the test pool has 100 GB and allocates volumes fully
    s = spec(**overrides)
    made.append(s.machine_id)
    return s


def hostdev_addresses(xml: str) -> list[dict]:
    root = SafeET.fromstring(xml)
    return [
        dict(address.attrib)
        for hostdev in root.findall("devices/hostdev")
        for address in hostdev.findall("source/address")
    ]


# --- the XML, without libvirt ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bus_id", "expected"),
    [
        ("00000000:18:00.0", PciAddress(0, 0x18, 0, 0)),
        ("00000001:9B:1f.7", PciAddress(1, 0x9B, 0x1F, 7)),
        ("0000:3b:00.1", PciAddress(0, 0x3B, 0, 1)),
        ("c1:00.0", PciAddress(0, 0xC1, 0, 0)),
    ],
)
def test_pci_bus_ids_are_parsed(bus_id, expected):
    assert PciAddress.parse(bus_id) == expected
    assert PciAddress.parse(expected.nvidia_smi()) == expected


@pytest.mark.parametrize(
    "bus_id",
    ["", "GPU-1234", "00000000:18:00", "00000000:18:00.8", "00000000:18:20.0", "10000:18:00.0"],
)
def test_bad_pci_bus_ids_are_refused(bus_id):
    with pytest.raises(PermanentBackendError, match="PCI bus id"):
        PciAddress.parse(bus_id)


def test_domain_xml_from_the_spec():
    backend = LibvirtBackend(uri_template=URI, image_dir="/var/lib/libvirt/images/")
    s = spec(machine_id="inst-42", name="llm <training> & more", vcpus=24, ram_gib=192)
    xml = backend.domain_xml(s)
    root = SafeET.fromstring(xml)
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "inst-42"
    assert root.findtext("vcpu") == "24"
    assert root.find("memory").get("unit") == "KiB"
    assert root.findtext("memory") == str(192 * 1024 * 1024)
    assert root.find("devices/disk/source").get("file") == "/var/lib/libvirt/images/inst-42.qcow2"
    assert root.find("devices/disk/driver").get("type") == "qcow2"
    assert hostdev_addresses(xml) == [
        {"domain": "0x0000", "bus": "0x18", "slot": "0x00", "function": "0x0"},
        {"domain": "0x0000", "bus": "0x2a", "slot": "0x00", "function": "0x0"},
    ]
    hostdev = root.find("devices/hostdev")
    assert (hostdev.get("mode"), hostdev.get("type"), hostdev.get("managed")) == (
        "subsystem",
        "pci",
        "yes",
    )
    meta = root.find(f"metadata/{{{NS}}}machine")
    assert meta.findtext(f"{{{NS}}}machine-id") == "inst-42"
    assert meta.findtext(f"{{{NS}}}name") == "llm <training> & more"
    defined = DefinedMachine.parse(xml)
    assert (defined.vcpus, defined.memory_kib, defined.is_portal_machine) == (
        24,
        192 * 1024 * 1024,
        True,
    )
    assert [a.nvidia_smi() for a in defined.gpus] == ["00000000:18:00.0", "00000000:2A:00.0"]


@pytest.mark.parametrize(
    ("memory", "kib"),
    [("<memory>2048</memory>", 2048), ("<memory unit='GiB'>2</memory>", 2 * 1024 * 1024),
     ("<memory unit='MB'>1024</memory>", 1_000_000), ("<memory unit='bytes'>1048576</memory>", 1024)],
)  # fmt: skip
def test_defined_memory_in_any_unit(memory, kib):
    defined = DefinedMachine.parse(f"<domain><name>x</name>{memory}<vcpu>1</vcpu></domain>")
    assert (defined.memory_kib, defined.is_portal_machine, defined.gpus) == (kib, False, ())


def test_volume_xml_is_an_overlay_on_the_image():
    backend = LibvirtBackend(uri_template=URI, image_dir="/srv/images")
    root = SafeET.fromstring(backend.volume_xml(spec(machine_id="inst-7", disk_gb=500)))
    assert root.findtext("name") == "inst-7.qcow2"
    assert (root.findtext("capacity"), root.find("capacity").get("unit")) == ("500", "GB")
    assert root.findtext("backingStore/path") == "/srv/images/ubuntu-2404-cuda-13.qcow2"


def test_mig_slices_are_refused():
    backend = LibvirtBackend(uri_template=URI)
    mig = spec(gpus=(gpu("00000000:18:00.0", mig_start=0, mig_size=1),))
    with pytest.raises(PermanentBackendError, match=r"MIG slices cannot be passed through.*vGPU"):
        backend.domain_xml(mig)


@pytest.mark.parametrize("field", ["machine_id", "image"])
def test_unsafe_names_are_refused(field):
    backend = LibvirtBackend(uri_template=URI)
    with pytest.raises(PermanentBackendError, match="not a safe"):
        backend.domain_xml(spec(**{field: "../../etc/passwd"}))


def test_bad_options_are_refused():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="only use"):
        LibvirtBackend(uri_template="qemu+ssh://{user}@{host}/system")
    with pytest.raises(ImproperlyConfigured, match="absolute"):
        LibvirtBackend(image_dir="images")
    with pytest.raises(ImproperlyConfigured, match="shutdown_timeout_seconds"):
        LibvirtBackend(shutdown_timeout_seconds="soon")


def test_without_libvirt_python_a_clear_error(monkeypatch, db):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # makes `import libvirt` fail
    backend = LibvirtBackend(uri_template=URI)
    with pytest.raises(PermanentBackendError, match=r"needs libvirt-python.*libvirt-dev"):
        backend.create(spec())
    with pytest.raises(PermanentBackendError, match="needs libvirt-python"):
        backend.describe("inst-1")


# --- against test:///default ------------------------------------------------------------------


def test_create_defines_and_boots_the_domain(backend, conn, made):
    s = new_spec(made, vcpus=12, ram_gib=96, disk_gb=3)
    status = backend.create(s)
    assert status.state == S.RUNNING
    assert status.host_name == "gpu-host-1"
    assert status.detail["gpu_pci_bus_ids"] == ["00000000:18:00.0", "00000000:2A:00.0"]
    assert status.detail["libvirt_state"] == "running"
    dom = conn.lookupByName(s.machine_id)
    xml = dom.XMLDesc(0)
    root = SafeET.fromstring(xml)
    assert root.findtext("vcpu") == "12"
    assert root.findtext("memory") == str(96 * 1024 * 1024)
    assert hostdev_addresses(xml) == [
        {"domain": "0x0000", "bus": "0x18", "slot": "0x00", "function": "0x0"},
        {"domain": "0x0000", "bus": "0x2a", "slot": "0x00", "function": "0x0"},
    ]
    assert root.find("devices/disk/source").get("file") == f"{POOL}/{s.machine_id}.qcow2"
    assert root.find(f"metadata/{{{NS}}}machine").findtext(f"{{{NS}}}machine-id") == s.machine_id
    volume = conn.storagePoolLookupByName("default-pool").storageVolLookupByName(
        f"{s.machine_id}.qcow2"
    )
    assert volume.info()[1] == 3 * 10**9
    assert (
        SafeET.fromstring(volume.XMLDesc(0)).findtext("backingStore/path")
        == f"{POOL}/ubuntu-2404-cuda-13.qcow2"
    )
    assert LibvirtPlacement.objects.get(machine_id=s.machine_id).uri == URI


def test_with_phone_home_readiness_a_running_domain_is_booting_until_its_guest_phones_home(
    lv, made, monkeypatch
):
    """Ready once cloud-init has phoned home and SSH answers (a later boot does not phone home
    again, so SSH alone tells then). The test driver's domains have an address but no guest:
    its SSH probe is stood in for here; tests/provisioning/test_real_vm.py probes a real one."""
    answers = {"ssh": True}
    monkeypatch.setattr(libvirt_backend, "ssh_answers", lambda host, port: answers["ssh"])
    backend = LibvirtBackend(
        uri_template=URI,
        image_dir=POOL,
        shutdown_timeout_seconds=0,
        seed=False,
        readiness="phone_home",
    )
    s = new_spec(made, ready_url="http://portal.example/machines/phone-home/t/")
    booting = backend.create(s)
    assert booting.state == S.PROVISIONING  # SSH answers, but cloud-init has not finished
    assert (booting.detail["stage"], booting.detail["phoned_home"]) == ("booting", False)
    assert phone_home.record(s.machine_id, {"instance_id": s.machine_id})
    ready = backend.describe(s.machine_id)
    assert (ready.state, ready.detail["stage"], ready.detail["phoned_home"]) == (
        S.RUNNING,
        "ready",
        True,
    )
    answers["ssh"] = False  # booted again later: it has phoned home before, SSH decides
    assert backend.describe(s.machine_id).state == S.PROVISIONING


def test_phone_home_readiness_needs_the_machines_url_to_give_the_seed(lv, made):
    backend = LibvirtBackend(
        uri_template=URI, image_dir=POOL, shutdown_timeout_seconds=0, readiness="phone_home"
    )
    s = new_spec(made)
    with pytest.raises(PermanentBackendError, match="ready_url"):
        backend.create(s)
    seed = backend.seed_for(new_spec(made, ready_url="http://portal.example/p/"))
    assert seed.phone_home_url == "http://portal.example/p/"
    ssh_ready = LibvirtBackend(uri_template=URI, image_dir=POOL, readiness="ssh")
    assert (
        ssh_ready.seed_for(new_spec(made, ready_url="http://portal.example/p/")).phone_home_url
        == ""
    )


def test_create_is_idempotent(backend, conn, made):
    s = new_spec(made)
    first = backend.create(s)
    uuid = conn.lookupByName(s.machine_id).UUIDString()
    assert backend.create(s) == first
    assert conn.lookupByName(s.machine_id).UUIDString() == uuid
    backend.stop(s.machine_id)
    assert backend.create(s).state == S.STOPPED  # an existing machine is returned as it is
    assert LibvirtPlacement.objects.filter(machine_id=s.machine_id).count() == 1


def test_describe_maps_the_domain_states(backend, conn, made):
    s = new_spec(made)
    backend.create(s)
    dom = conn.lookupByName(s.machine_id)
    dom.suspend()
    paused = backend.describe(s.machine_id)
    assert (paused.state, paused.detail["libvirt_state"]) == (S.RUNNING, "paused")
    dom.resume()
    assert backend.describe(s.machine_id).state == S.RUNNING
    dom.shutdown()  # the guest powered itself off
    off = backend.describe(s.machine_id)
    assert (off.state, off.detail["libvirt_state"]) == (S.STOPPED, "shutoff")
    assert off.detail["gpu_pci_bus_ids"] == ["00000000:18:00.0", "00000000:2A:00.0"]
    dom.undefine()  # somebody removed it behind our back
    assert backend.describe(s.machine_id).state == S.MISSING
    assert backend.describe("inst-never-made").state == S.MISSING


def test_addresses_come_from_the_dhcp_leases_while_running(backend, made):
    s = new_spec(made)
    (address,) = backend.create(s).ip_addresses
    assert ipaddress.ip_address(address) in ipaddress.ip_network(
        "192.168.122.0/24"
    )  # the test network
    assert backend.stop(s.machine_id).ip_addresses == ()


def test_stop_start_reboot_terminate(backend, lv, conn, made):
    s = new_spec(made)
    backend.create(s)
    stopped = backend.stop(s.machine_id)
    assert (stopped.state, stopped.detail["forced_off"]) == (S.STOPPED, False)
    assert backend.stop(s.machine_id).state == S.STOPPED
    with pytest.raises(PermanentBackendError, match="not running; start it"):
        backend.reboot(s.machine_id)
    assert backend.start(s).state == S.RUNNING
    assert backend.start(s).state == S.RUNNING
    assert backend.reboot(s.machine_id).state == S.RUNNING
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    with pytest.raises(lv.libvirtError, match=r"Domain not found"):
        conn.lookupByName(s.machine_id)
    pool = conn.storagePoolLookupByName("default-pool")
    assert f"{s.machine_id}.qcow2" not in pool.listVolumes()
    assert not LibvirtPlacement.objects.filter(machine_id=s.machine_id).exists()
    assert backend.terminate(s.machine_id).state == S.TERMINATED
    assert backend.describe(s.machine_id).state == S.MISSING
    assert backend.stop(s.machine_id).state == S.MISSING
    assert backend.reboot(s.machine_id).state == S.MISSING
    assert backend.start(s).state == S.MISSING  # no disk: nothing to start


def test_stop_destroys_a_guest_that_ignores_the_shutdown(backend, lv, made, monkeypatch):
    s = new_spec(made)
    backend.create(s)
    monkeypatch.setattr(lv.virDomain, "shutdown", lambda self, *args: 0)  # the guest does not react
    started = time.monotonic()
    status = backend.stop(s.machine_id)
    elapsed = time.monotonic() - started
    assert (status.state, status.detail["forced_off"]) == (S.STOPPED, True)
    assert 0.05 <= elapsed < 2


def test_stop_of_a_paused_machine_pulls_the_plug(backend, conn, made):
    s = new_spec(made)
    backend.create(s)
    conn.lookupByName(s.machine_id).suspend()
    status = backend.stop(s.machine_id)
    assert (status.state, status.detail["forced_off"]) == (S.STOPPED, True)


def test_start_with_other_gpus_redefines_the_domain(backend, conn, made):
    s = new_spec(made)
    backend.create(s)
    uuid = conn.lookupByName(s.machine_id).UUIDString()
    backend.stop(s.machine_id)
    other = spec(machine_id=s.machine_id, gpus=(gpu("00000000:9B:00.0"),), vcpus=8, ram_gib=64)
    status = backend.start(other)
    assert status.state == S.RUNNING
    assert status.detail["gpu_pci_bus_ids"] == ["00000000:9B:00.0"]
    dom = conn.lookupByName(s.machine_id)
    assert dom.UUIDString() == uuid
    assert hostdev_addresses(dom.XMLDesc(0)) == [
        {"domain": "0x0000", "bus": "0x9b", "slot": "0x00", "function": "0x0"}
    ]
    assert (status.detail["vcpus"], status.detail["memory_kib"]) == (8, 64 * 1024 * 1024)


def test_a_start_without_gpus_redefines_the_domain_with_no_hostdev(backend, conn, made):
    """No-GPU mode: the spec carries no GPUs and a smaller CPU shape; the domain is redefined
    with no ``<hostdev>``, and a later start with GPUs puts them back."""
    s = new_spec(made)
    backend.create(s)
    assert hostdev_addresses(conn.lookupByName(s.machine_id).XMLDesc(0))
    backend.stop(s.machine_id)
    cpu_only = spec(machine_id=s.machine_id, gpus=(), vcpus=4, ram_gib=16)
    status = backend.start(cpu_only)
    assert status.state == S.RUNNING and status.detail["gpu_pci_bus_ids"] == []
    assert hostdev_addresses(conn.lookupByName(s.machine_id).XMLDesc(0)) == []
    assert (status.detail["vcpus"], status.detail["memory_kib"]) == (4, 16 * 1024 * 1024)
    backend.stop(s.machine_id)
    assert backend.start(s).state == S.RUNNING
    assert hostdev_addresses(conn.lookupByName(s.machine_id).XMLDesc(0))


def test_start_on_another_host_moves_the_placement(lv, made):
    # Both "hosts" reach the same test driver; the backend sees two URIs.
    backend = LibvirtBackend(
        uri_template="test:///default?host={host}",
        image_dir=POOL,
        shutdown_timeout_seconds=0.05,
        **TEST_DRIVER,
    )
    s = new_spec(made, host_name="gpu-a")
    assert backend.create(s).detail["uri"] == "test:///default?host=gpu-a"
    backend.stop(s.machine_id)
    moved = backend.start(
        spec(machine_id=s.machine_id, host_name="gpu-b", gpus=(gpu("00000000:C1:00.0"),))
    )
    assert (moved.state, moved.host_name) == (S.RUNNING, "gpu-b")
    assert moved.detail["uri"] == "test:///default?host=gpu-b"
    assert moved.detail["gpu_pci_bus_ids"] == ["00000000:C1:00.0"]
    placement = LibvirtPlacement.objects.get(machine_id=s.machine_id)
    assert (placement.uri, placement.host_name) == ("test:///default?host=gpu-b", "gpu-b")
    assert backend.describe(s.machine_id).host_name == "gpu-b"
    assert backend.stop(s.machine_id).state == S.STOPPED  # found through the placement
    assert backend.terminate(s.machine_id).state == S.TERMINATED


def test_start_refuses_to_move_a_running_machine(lv, made):
    backend = LibvirtBackend(
        uri_template="test:///default?host={host}", image_dir=POOL, **TEST_DRIVER
    )
    s = new_spec(made, host_name="gpu-a")
    backend.create(s)
    status = backend.start(spec(machine_id=s.machine_id, host_name="gpu-b"))
    assert (status.state, status.host_name) == (S.RUNNING, "gpu-a")
    assert LibvirtPlacement.objects.get(machine_id=s.machine_id).host_name == "gpu-a"


def test_spec_host_uri_wins_over_the_template(lv, made):
    backend = LibvirtBackend(
        uri_template="qemu+ssh://root@{host}/system", image_dir=POOL, **TEST_DRIVER
    )
    s = new_spec(made, host_uri=URI)
    assert backend.create(s).detail["uri"] == URI
    assert backend.describe(s.machine_id).state == S.RUNNING  # found through the placement


def test_list_machines_lists_only_portal_domains(backend, conn, made):
    a, b = new_spec(made), new_spec(made)
    backend.create(a)
    backend.create(b)
    backend.stop(b.machine_id)
    foreign = conn.defineXML(
        "<domain type='test'><name>not-ours</name><memory>1024</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        listed = {m.machine_id: m.state for m in backend.list_machines()}
    finally:
        foreign.undefine()
    assert listed[a.machine_id] == S.RUNNING
    assert listed[b.machine_id] == S.STOPPED
    assert "not-ours" not in listed and "test" not in listed  # "test" is the driver's own domain


def test_mig_spec_is_refused_before_touching_the_host(backend, conn, made):
    s = new_spec(made, gpus=(gpu("00000000:18:00.0", mig_start=4, mig_size=2),))
    with pytest.raises(PermanentBackendError, match="MIG"):
        backend.create(s)
    assert s.machine_id not in conn.listDefinedDomains()
    assert not LibvirtPlacement.objects.filter(machine_id=s.machine_id).exists()


def test_a_failed_boot_leaves_nothing_behind(backend, lv, conn, made, monkeypatch):
    def refuse(self, *args):
        lv.virResetLastError()  # libvirtError takes its message from the last error, if any
        raise lv.libvirtError(
            "unsupported configuration: host doesn't support passthrough of host PCI devices"
        )

    monkeypatch.setattr(lv.virDomain, "create", refuse)
    s = new_spec(made)
    with pytest.raises(PermanentBackendError, match="passthrough"):
        backend.create(s)
    monkeypatch.undo()
    assert s.machine_id not in conn.listDefinedDomains()
    assert f"{s.machine_id}.qcow2" not in conn.storagePoolLookupByName("default-pool").listVolumes()
    assert not LibvirtPlacement.objects.filter(machine_id=s.machine_id).exists()
    assert backend.create(s).state == S.RUNNING  # and a retry starts clean


def test_a_missing_storage_pool_is_a_permanent_error(lv, made):
    backend = LibvirtBackend(uri_template=URI, image_dir="/nowhere")
    s = new_spec(made)
    with pytest.raises(PermanentBackendError, match="no storage pool for /nowhere"):
        backend.create(s)
    assert not LibvirtPlacement.objects.filter(machine_id=s.machine_id).exists()


def test_libvirt_errors_are_translated(backend, lv, made):
    unreachable = LibvirtBackend(uri_template="qemu+tcp://127.0.0.1:1/system", image_dir=POOL)
    with pytest.raises(TransientBackendError, match="cannot connect"):
        unreachable.create(new_spec(made))
    with (
        pytest.raises(PermanentBackendError, match="test:///default"),
        backend._connect(URI) as conn,
    ):
        conn.defineXML("<domain><name>broken")


class FakeLibvirtError(Exception):
    def __init__(self, message, code, origin):
        super().__init__(message)
        self.code, self.origin = code, origin

    def get_error_code(self):
        return self.code

    def get_error_domain(self):
        return self.origin

    def get_error_message(self):
        return str(self)


@pytest.mark.parametrize(
    ("message", "code", "origin", "expected"),
    [
        ("Requested operation is not valid: PCI device 0000:18:00.0 is in use by driver QEMU, domain inst-3",
         "VIR_ERR_OPERATION_INVALID", "VIR_FROM_NONE", CapacityError),
        ("End of file while reading data: Input/output error", "VIR_ERR_SYSTEM_ERROR", "VIR_FROM_RPC", TransientBackendError),
        ("Timed out during operation: cannot acquire state change lock", "VIR_ERR_OPERATION_TIMEOUT", "VIR_FROM_QEMU", TransientBackendError),
        ("XML error: missing name", "VIR_ERR_XML_ERROR", "VIR_FROM_DOMAIN", PermanentBackendError),
        ("internal error: Not enough free space in pool for volume 'inst-3.qcow2'", "VIR_ERR_INTERNAL_ERROR", "VIR_FROM_TEST", CapacityError),
        ("Cannot access storage file '/images/nope.qcow2'", "VIR_ERR_INTERNAL_ERROR", "VIR_FROM_QEMU", PermanentBackendError),
    ],
)  # fmt: skip
def test_error_translation(lv, message, code, origin, expected):
    error = translate_error(
        lv, FakeLibvirtError(message, getattr(lv, code), getattr(lv, origin)), "host-1"
    )
    assert type(error) is expected
    assert message in str(error)
