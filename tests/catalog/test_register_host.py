"""``manage.py register_host``: the real H200 host's report and MIG tables, synthetic multi-GPU
hosts, and inputs that must be refused with a clear error and nothing written."""

import re
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from portal.accounts.models import AuditEvent
from portal.catalog.models import Gpu, Host, MigProfile
from portal.catalog.reports import MAX_REPORT_BYTES
from portal.catalog.synthetic import (
    H100_MIG_TABLES,
    H200_MIG_TABLES,
    H200_REPORT,
    synthesize_report,
)
from tests.factories.catalog import BILLION_LAUGHS, EXTERNAL_ENTITY

pytestmark = pytest.mark.django_db

H200_UUID = "GPU-acbd8c60-66a2-c5f7-967a-de51ca969cb3"

# name -> (profile id, memory GiB, max instances, placements, size), from h200-host.txt
H200_PROFILES = {
    "7g.141gb": (0, Decimal("140.00"), 1, [0], 8),
    "4g.71gb": (5, Decimal("69.75"), 1, [0], 4),
    "3g.71gb": (9, Decimal("69.75"), 2, [0, 4], 4),
    "2g.35gb": (14, Decimal("32.50"), 3, [0, 2, 4], 2),
    "1g.35gb": (15, Decimal("32.50"), 4, [0, 2, 4, 6], 2),
    "1g.18gb": (19, Decimal("16.00"), 7, [0, 1, 2, 3, 4, 5, 6], 1),
    "1g.18gb+me": (20, Decimal("16.00"), 1, [0, 1, 2, 3, 4, 5, 6], 1),
}


@pytest.fixture
def write(tmp_path):
    def write(name: str, content: bytes | str):
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    return write


def register(*args: str) -> str:
    out = StringIO()
    call_command("register_host", *args, stdout=out)
    return out.getvalue()


def args(name="h200-real", region="us-east-1", report=H200_REPORT, mig=H200_MIG_TABLES, **more):
    result = ["--name", name, "--region", region, "--report", str(report)]
    result += ["--vcpus", str(more.get("vcpus", 16)), "--ram-gib", str(more.get("ram_gib", 125))]
    if "disk_gb" in more:
        result += ["--disk-gb", str(more["disk_gb"])]
    if mig is not None:
        result += ["--mig-tables", str(mig)]
    return result


def written() -> tuple[int, int, int, int]:
    return (
        Host.objects.count(),
        Gpu.objects.count(),
        MigProfile.objects.count(),
        AuditEvent.objects.count(),
    )


def test_registers_the_real_h200_host_with_its_mig_profiles(gpu_models, region):
    out = register(*args(disk_gb=500))

    host = Host.objects.get(name="h200-real")
    assert (host.region, host.vcpus, host.ram_gib, host.disk_gb) == (region, 16, 125, 500)
    assert (host.driver_version, host.cuda_version, host.state) == ("580.159.04", "13.0", "active")
    (gpu,) = host.gpus.all()
    assert gpu.gpu_model == gpu_models["h200-sxm-141gb"]
    assert (gpu.index, gpu.uuid, gpu.pci_bus_id, gpu.memory_mib) == (
        0,
        H200_UUID,
        "00000000:00:06.0",
        143771,
    )
    assert gpu.mig_enabled  # the model now has MIG profiles
    profiles = {
        p.name: (p.profile_id, p.memory_gib, p.max_instances, p.placements, p.memory_slots)
        for p in MigProfile.objects.filter(gpu_model=gpu.gpu_model)
    }
    assert profiles == H200_PROFILES
    assert MigProfile.objects.get(name="3g.71gb").compute_slices == 3

    event = AuditEvent.objects.get(action="host.register")
    assert (event.target_id, event.actor_label) == (str(host.pk), "system")
    assert event.details == {"gpus": 1, "region": "us-east-1"}

    assert "Registered host h200-real in us-east-1: 1 GPU(s), 16 vCPUs, 125 GiB RAM" in out
    gpu_line = next(line for line in out.splitlines() if H200_UUID in line)
    assert gpu_line.split() == [
        "0",
        "H200",
        "SXM",
        "141GB",
        H200_UUID,
        "00000000:00:06.0",
        "143771",
        "MiB",
        "enabled",
    ]
    assert "MIG profiles of H200 SXM 141GB imported (7):" in out
    assert "placements {0,4}:4" in next(line for line in out.splitlines() if "3g.71gb" in line)
    assert "placements {0}:8" in next(line for line in out.splitlines() if "7g.141gb" in line)
    assert "placements {0,1,2,3,4,5,6}:1" in next(
        line for line in out.splitlines() if " 1g.18gb " in line
    )


def test_without_mig_tables_the_gpu_is_sold_whole(gpu_models, region):
    out = register(*args(mig=None))
    gpu = Gpu.objects.get(uuid=H200_UUID)
    assert not gpu.mig_enabled
    assert not MigProfile.objects.exists()
    assert "MIG profiles: none imported (no --mig-tables given)." in out


def test_registers_a_synthetic_eight_gpu_h100_host(gpu_models, region, write):
    report = write("h100.xml", synthesize_report(gpu="H100", count=8, seed="cmd"))
    out = register(*args(name="h100-node-01", report=report, mig=H100_MIG_TABLES, vcpus=192))

    gpus = list(Gpu.objects.filter(host__name="h100-node-01").order_by("index"))
    assert [g.index for g in gpus] == list(range(8))
    assert {g.gpu_model.code for g in gpus} == {"h100-sxm5-80gb"}
    assert {g.memory_mib for g in gpus} == {81559}
    assert len({g.uuid for g in gpus}) == 8
    assert [g.pci_bus_id for g in gpus][:2] == ["00000000:18:00.0", "00000000:28:00.0"]
    assert all(g.mig_enabled for g in gpus)
    assert MigProfile.objects.filter(gpu_model__code="h100-sxm5-80gb").exists()
    assert not MigProfile.objects.filter(gpu_model__code="h200-sxm-141gb").exists()
    assert out.count(" MiB  enabled") == 8


def test_a_host_without_mig_capable_gpus_imports_no_profiles(gpu_models, region, write):
    report = write("l40s.xml", synthesize_report(gpu="L40S", count=4, seed="cmd-l40s"))
    out = register(*args(name="l40s-01", report=report))
    assert not MigProfile.objects.exists()
    assert not Gpu.objects.filter(mig_enabled=True).exists()
    assert "none imported (no MIG-capable GPU on this host)" in out


REAL = H200_REPORT.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(REAL[: len(REAL) // 2], "is not well-formed XML", id="truncated"),
        pytest.param(b"<nvidia_smi_log><gpu>", "is not well-formed XML", id="malformed"),
        pytest.param(b"<foo/>", "not an nvidia-smi report: the root element is <foo>", id="foo"),
        pytest.param(b"", "The report is empty.", id="empty"),
        pytest.param(BILLION_LAUGHS, "forbidden XML features (EntitiesForbidden)", id="bomb"),
        pytest.param(EXTERNAL_ENTITY, "forbidden XML features", id="external-entity"),
        pytest.param(
            REAL.replace(b"<product_name>NVIDIA H200<", b"<product_name>NVIDIA H900<"),
            "is a 'NVIDIA H900', which is not a known GPU model",
            id="unknown-gpu",
        ),
        pytest.param(
            REAL.replace(b"<total>143771 MiB</total>", b"<total>lots</total>", 1),
            "memory 'lots' is not in MiB",
            id="bad-memory",
        ),
        pytest.param(
            REAL.replace(b"<attached_gpus>1<", b"<attached_gpus>2<"),
            "says 2 GPUs are attached but describes 1",
            id="gpu-count",
        ),
        pytest.param(b" " * (MAX_REPORT_BYTES + 1), "at most 2097152 are accepted", id="too-big"),
    ],
)
def test_bad_reports_are_refused_and_nothing_is_written(
    gpu_models, region, write, content, message
):
    report = write("report.xml", content)
    before = written()
    with pytest.raises(CommandError) as error:
        register(*args(report=report))
    assert message in str(error.value)
    assert "lollol" not in str(error.value)
    assert written() == before
    assert not MigProfile.objects.exists()


def test_the_same_gpus_cannot_be_registered_twice(gpu_models, region):
    register(*args(name="h200-a"))
    before = written()
    with pytest.raises(CommandError) as error:
        register(*args(name="h200-b"))
    assert str(error.value) == f"GPU {H200_UUID} is already registered on host h200-a."
    assert written() == before
    assert not Host.objects.filter(name="h200-b").exists()


def test_a_host_name_is_registered_once(gpu_models, region, write):
    register(*args(name="h200-a"))
    report = write("other.xml", synthesize_report(gpu="H200", count=2, seed="other"))
    before = written()
    with pytest.raises(
        CommandError, match=re.escape("A host named 'h200-a' is already registered.")
    ):
        register(*args(name="h200-a", report=report))
    assert written() == before


def test_unknown_region_lists_the_known_ones(gpu_models, region):
    with pytest.raises(CommandError) as error:
        register(*args(region="mars-1"))
    assert str(error.value) == "Unknown region 'mars-1'. Known regions: us-east-1."
    assert written() == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "h200 node!"}, "may contain only letters, digits, hyphens and underscores"),
        ({"name": "h" * 81}, "is longer than 80 characters"),
        ({"vcpus": 0}, "vCPUs and RAM must be at least 1."),
        ({"ram_gib": -1}, "vCPUs and RAM must be at least 1."),
        ({"disk_gb": -1}, "--disk-gb cannot be negative."),
    ],
)
def test_bad_host_figures_are_refused(gpu_models, region, change, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        register(*args(**change))
    assert written() == (0, 0, 0, 0)


def test_bad_or_missing_files_are_refused(gpu_models, region, write, tmp_path):
    with pytest.raises(CommandError, match="Cannot read the report"):
        register(*args(report=tmp_path / "missing.xml"))
    tables = write("mig.txt", "GPU  0 Profile ID 19 Placements: {0,1,2,3,4,5,6}:1\n")
    with pytest.raises(CommandError, match="No MIG GPU-instance profiles found"):
        register(*args(mig=tables))
    only_lgip = write("lgip.txt", H200_MIG_TABLES.read_text().split("## mig -lgipp")[0])
    with pytest.raises(CommandError, match=r"MIG profile 1g.18gb \(ID 19\) has no placements"):
        register(*args(mig=only_lgip))
    binary = write("mig.bin", b"\xff\xfe\x00garbage")
    with pytest.raises(CommandError, match="is not UTF-8 text"):
        register(*args(mig=binary))
    assert written() == (0, 0, 0, 0)
