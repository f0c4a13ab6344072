"""GPU telemetry: the agent (recorded run and a fake NVML), idempotent storage, attribution to
the instance that held the GPU, energy from the real H200 run, the instance page and the demo.

Fixtures: the real one-GPU H200 host registered from its report as ``h200-euc1-probe`` (as the
demo does), whole-GPU and MIG types priced in its region, and an organisation with an owner and
an SSH key. Launches stay pending (the sync task runs on commit, which page and service tests
never reach); only the allocations matter here, and their times are set to a fixed past moment.
"""

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pynvml
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from portal.accounts import services as account_services
from portal.catalog import capacity
from portal.catalog import services as catalog_services
from portal.catalog.models import Allocation, GpuModel, Image, InstanceType, MigProfile
from portal.catalog.synthetic import DATA_DIR, H200_MIG_TABLES, H200_REPORT, synthesize_report
from portal.compute import services as compute_services
from portal.compute.models import Instance
from portal.errors import InvalidInput
from portal.metering import telemetry
from portal.metering.models import GpuSample
from portal.metering.telemetry import Sample, instance_telemetry, telemetry_record
from tests import factories

pytestmark = pytest.mark.django_db

PROBE_UUID = "GPU-acbd8c60-66a2-c5f7-967a-de51ca969cb3"
T0 = timezone.now().replace(microsecond=0) - timedelta(hours=2)


def recorded_rows() -> list[dict]:
    """The recorded run read plainly, independent of ``telemetry.load_recording``."""
    with telemetry.RECORDED_SAMPLES.open(newline="") as handle:
        return list(csv.DictReader(handle))


ROWS = recorded_rows()
ENERGY_MJ = int(ROWS[-1]["energy_total_mj"]) - int(ROWS[0]["energy_total_mj"])  # monotonic run
PEAK_W = max(int(r["power_mw"]) for r in ROWS) / 1000
AVERAGE_UTIL = sum(int(r["util_gpu_pct"]) for r in ROWS) / len(ROWS)


@pytest.fixture
def probe(db):
    """The real H200 host, its GPU, types and an organisation ready to launch on it."""
    catalog_services.gpu_models_load(path=DATA_DIR / "gpus.csv")
    region = catalog_services.region_ensure(code="europe-central-1", name="Frankfurt", country="DE")
    host = catalog_services.host_register(
        name=telemetry.PROBE_HOST,
        region=region,
        report=H200_REPORT.read_bytes(),
        vcpus=16,
        ram_gib=125,
        disk_gb=500,
        mig_tables=H200_MIG_TABLES.read_text(),
    )
    h200 = GpuModel.objects.get(code="h200-sxm-141gb")
    for name, profile in (("gpu_1x_h200_sxm", None), ("mig_h200_1g_18gb", "1g.18gb")):
        instance_type, _ = catalog_services.instance_type_upsert(
            name=name,
            gpu_model=h200,
            gpu_count=1,
            mig_profile=MigProfile.objects.get(gpu_model=h200, name=profile) if profile else None,
            vcpus=2,
            ram_gib=16,
        )
        catalog_services.price_set(
            instance_type=instance_type, region=region, currency="USD", on_demand_per_hour="3.79"
        )
    Image.objects.create(name="ubuntu-24.04-cuda-13.0", os="Ubuntu 24.04", is_default=True)
    org = factories.organization(currency="USD")
    owner = factories.member(org, "owner")
    key = account_services.ssh_key_create(
        actor=factories.actor(org, owner), public_key=factories.ed25519_public_key()
    )
    return SimpleNamespace(
        host=host, gpu=host.gpus.get(), region=region, org=org, owner=owner, key=key
    )


def launch(probe, name: str = "train", instance_type: str = "gpu_1x_h200_sxm") -> Instance:
    instance, _ = compute_services.instance_launch(
        actor=factories.actor(probe.org, probe.owner),
        request=compute_services.LaunchRequest(
            name=name,
            instance_type=instance_type,
            region=probe.region.code,
            ssh_key_ids=(probe.key.pk,),
        ),
    )
    return instance


def held(instance: Instance, start: datetime, end: datetime | None = None) -> Instance:
    """Set when the instance's current allocation was taken (and released)."""
    allocation = instance.allocation
    if end is not None:
        capacity.allocation_release(allocation=allocation)
        Instance.objects.filter(pk=instance.pk).update(allocation=None)
    Allocation.objects.filter(pk=allocation.pk).update(created_at=start, released_at=end)
    return Instance.objects.get(pk=instance.pk)


def replay(*extra: str, start: datetime = T0 + timedelta(seconds=60)) -> str:
    out = io.StringIO()
    call_command(
        "gpu_agent",
        "--host",
        telemetry.PROBE_HOST,
        "--replay",
        str(telemetry.RECORDED_SAMPLES),
        "--speed",
        "0",
        "--start",
        start.isoformat(),
        *extra,
        stdout=out,
    )
    return out.getvalue()


# --- the recorded run -------------------------------------------------------------------------


def test_the_recorded_run_stores_100_samples_attributed_with_their_energy(probe):
    instance = held(launch(probe), T0)
    output = replay()
    assert GpuSample.objects.filter(gpu=probe.gpu).count() == 100
    assert "100 new, 0 already recorded" in output and "2.716 Wh" in output

    result = instance_telemetry(instance)
    assert result.measured and result.samples == 100 and len(result.gpus) == 1
    assert result.energy_mj == ENERGY_MJ == 9_776_005
    assert abs(result.energy_wh - Decimal(ENERGY_MJ) / Decimal(3_600_000)) < Decimal("1e-9")
    assert abs(float(result.energy_wh) - 2.7156) < 0.0001
    assert result.peak_power_w == PEAK_W == 706.264
    assert result.average_utilization_pct == pytest.approx(AVERAGE_UTIL)
    (segment,) = result.gpus[0].segments
    assert len(segment) == 100  # fewer samples than buckets: each is its own point
    assert segment[0].time == pytest.approx(
        T0 + timedelta(seconds=60.009), abs=timedelta(milliseconds=1)
    )
    assert segment[40].power_w == pytest.approx(int(ROWS[40]["power_mw"]) / 1000)
    assert result.first == T0 + timedelta(seconds=60.009)
    assert result.last == T0 + timedelta(seconds=60 + 26.377)


def test_sending_again_changes_nothing(probe):
    instance = held(launch(probe), T0)
    replay()
    before = instance_telemetry(instance)
    assert "0 new, 100 already recorded" in replay()
    first_three = telemetry.replay_samples(
        telemetry.load_recording(telemetry.RECORDED_SAMPLES),
        gpu_uuid=PROBE_UUID,
        start=T0 + timedelta(seconds=60),
    )[:3]
    again = telemetry_record(samples=first_three * 2)
    assert (again.created, again.duplicates) == (0, 6)
    assert GpuSample.objects.count() == 100
    assert instance_telemetry(instance) == before


def test_a_replay_is_sent_at_its_recorded_pace_times_speed(probe, monkeypatch):
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    out = io.StringIO()
    call_command(
        "gpu_agent",
        "--host",
        telemetry.PROBE_HOST,
        "--replay",
        str(telemetry.RECORDED_SAMPLES),
        "--speed",
        "100",
        stdout=out,
    )
    assert len(slept) == 100 and slept[0] == 0
    assert sum(slept) == pytest.approx((26.377 - 0.009) / 100)
    assert GpuSample.objects.count() == 100
    first = GpuSample.objects.order_by("time").first()
    assert abs(first.time - timezone.now()) < timedelta(seconds=30)  # --start defaults to now


# --- attribution ------------------------------------------------------------------------------


def energy_of(rows: list[dict]) -> int:
    return telemetry.counter_increase(int(r["energy_total_mj"]) for r in rows)


def test_samples_outside_the_holding_period_belong_to_whoever_held_the_gpu(probe):
    start = T0 + timedelta(seconds=60)
    first = held(
        launch(probe, "first"), start + timedelta(seconds=5), start + timedelta(seconds=15)
    )
    second = held(launch(probe, "second"), start + timedelta(seconds=15))
    replay(start=start)
    one, two = instance_telemetry(first), instance_telemetry(second)
    mine = [r for r in ROWS if 5 <= float(r["t_s"]) < 15]
    theirs = [r for r in ROWS if float(r["t_s"]) >= 15]
    assert one.samples == len(mine) and two.samples == len(theirs)
    assert one.energy_mj == energy_of(mine) and two.energy_mj == energy_of(theirs)
    assert one.first == start + timedelta(seconds=float(mine[0]["t_s"]))
    assert one.last == start + timedelta(seconds=float(mine[-1]["t_s"]))
    # nothing before the first took the GPU is anyone's
    assert one.samples + two.samples == 100 - sum(1 for r in ROWS if float(r["t_s"]) < 5)


def test_past_allocations_count_and_energy_never_spans_the_gap_between_them(probe):
    start = T0 + timedelta(seconds=60)
    instance = held(launch(probe), start, start + timedelta(seconds=8))
    # started again later: a new allocation with the same holder, the instance's current one
    allocation = capacity.allocation_reserve(
        instance_type=instance.instance_type, region=probe.region, holder=f"instance:{instance.pk}"
    )
    Instance.objects.filter(pk=instance.pk).update(allocation=allocation)
    instance = held(Instance.objects.get(pk=instance.pk), start + timedelta(seconds=20))
    replay(start=start)
    result = instance_telemetry(instance)
    before = [r for r in ROWS if float(r["t_s"]) < 8]
    after = [r for r in ROWS if float(r["t_s"]) >= 20]
    assert result.samples == len(before) + len(after)
    assert result.energy_mj == energy_of(before) + energy_of(after) < ENERGY_MJ
    assert [len(s) for s in result.gpus[0].segments] == [len(before), len(after)]


def test_a_counter_reset_counts_what_the_counter_shows_after_it(probe):
    instance = held(launch(probe), T0)
    values = [1_000, 3_000, 6_000, 500, 2_500]  # the driver reloaded before the fourth
    telemetry_record(
        samples=[
            Sample(gpu_uuid=PROBE_UUID, time=T0 + timedelta(seconds=i), energy_mj=v, power_mw=1)
            for i, v in enumerate(values)
        ]
    )
    assert telemetry.counter_increase(values) == 2_000 + 3_000 + 500 + 2_000
    assert instance_telemetry(instance).energy_mj == 7_500


def test_a_mig_instance_is_not_measured_per_slice(probe):
    instance = held(launch(probe, "slice", "mig_h200_1g_18gb"), T0)
    replay()
    result = instance_telemetry(instance)
    assert not result.measured and result.samples == 0 and result.charts == ()


def test_a_gpu_without_an_energy_counter_or_samples_has_no_energy(probe):
    instance = held(launch(probe), T0)
    assert not instance_telemetry(instance).has_samples
    telemetry_record(samples=[Sample(gpu_uuid=PROBE_UUID, time=T0, utilization_pct=50)])
    result = instance_telemetry(instance)
    assert result.samples == 1 and result.energy_mj is None and result.energy_text == "\u2014"
    assert result.peak_power_w is None and result.average_utilization_pct == 50


def test_a_long_series_is_averaged_into_at_most_200_points_per_gpu(probe):
    start = T0 - timedelta(hours=4)  # 3,000 samples 5 s apart: 4 h 10 min
    instance = held(launch(probe), start)
    samples = [
        Sample(
            gpu_uuid=PROBE_UUID,
            time=start + timedelta(seconds=5 * i),
            utilization_pct=i % 101,
            power_mw=100_000 + (i % 7) * 1_000,
            energy_mj=1_000_000 + 600_000 * i,
        )
        for i in range(3_000)
    ]
    assert telemetry_record(samples=samples).created == 3_000
    result = instance_telemetry(instance)
    (segment,) = result.gpus[0].segments
    assert 190 <= len(segment) <= telemetry.SERIES_POINTS
    assert result.samples == 3_000 and result.energy_mj == 600_000 * 2_999
    assert result.peak_power_w == 106.0
    weighted = sum(p.power_w for p in segment) / len(segment)
    assert weighted == pytest.approx(103.0, abs=0.1)
    assert [p.time for p in segment] == sorted(p.time for p in segment)
    assert segment[0].time >= start and segment[-1].time <= start + timedelta(seconds=5 * 2_999)


# --- recording ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "code"),
    [
        (Sample(gpu_uuid="GPU-nope", time=T0), "gpu_unknown"),
        (Sample(gpu_uuid=PROBE_UUID, time=T0, utilization_pct=101), "reading"),
        (Sample(gpu_uuid=PROBE_UUID, time=T0, power_mw=-1), "reading"),
        (Sample(gpu_uuid=PROBE_UUID, time=T0, energy_mj=1.5), "reading"),
        (Sample(gpu_uuid=PROBE_UUID, time=T0.replace(tzinfo=None)), "time"),
        (Sample(gpu_uuid=PROBE_UUID, time=timezone.now() + timedelta(hours=1)), "time"),
    ],
)
def test_an_invalid_sample_refuses_the_batch(probe, sample, code):
    good = Sample(gpu_uuid=PROBE_UUID, time=T0 - timedelta(seconds=1), utilization_pct=1)
    with pytest.raises(InvalidInput) as refused:
        telemetry_record(samples=[good, sample])
    assert refused.value.code == code
    assert not GpuSample.objects.exists()


def test_an_agent_writes_only_its_own_hosts_gpus(probe):
    other = catalog_services.host_register(
        name="h200-other",
        region=probe.region,
        report=synthesize_report(gpu="H200", count=1, seed="telemetry-other"),
        vcpus=16,
        ram_gib=125,
    )
    with pytest.raises(InvalidInput) as refused:
        telemetry_record(samples=[Sample(gpu_uuid=PROBE_UUID, time=T0)], host=other)
    assert refused.value.code == "gpu_unknown" and "h200-other" in refused.value.message


def test_the_replay_command_refuses_what_it_cannot_use(probe, tmp_path):
    with pytest.raises(CommandError, match="No host named"):
        call_command("gpu_agent", "--host", "nope", "--once")
    with pytest.raises(CommandError, match="has no GPU GPU-x"):
        replay("--gpu-uuid", "GPU-x")
    bad = tmp_path / "bad.csv"
    bad.write_text("t_s,power_mw\n0.1,100\n0.1,200\n")
    with pytest.raises(CommandError, match="line 3: t_s must increase"):
        call_command("gpu_agent", "--host", telemetry.PROBE_HOST, "--replay", str(bad))
    with pytest.raises(CommandError, match="time zone"):
        replay(start=T0.replace(tzinfo=None))
    with pytest.raises(CommandError, match="--start goes with --replay"):
        call_command("gpu_agent", "--host", telemetry.PROBE_HOST, "--start", "2026-01-01")
    assert not GpuSample.objects.exists()


# --- the agent with NVML ----------------------------------------------------------------------


class FakeNvml:
    """What pynvml answers on a one-GPU H200 host (plus a GPU the portal does not know)."""

    def __init__(self, monkeypatch) -> None:
        self.initialised = self.shut_down = 0
        handles = {0: "h0", 1: "h1"}
        uuids = {"h0": PROBE_UUID, "h1": "GPU-00000000-not-registered"}
        calls = {
            "nvmlInit": self.init,
            "nvmlShutdown": self.shutdown,
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": handles.__getitem__,
            "nvmlDeviceGetUUID": uuids.__getitem__,
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=87, memory=24),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
                used=1_839_071_232, total=150_754_820_096
            ),
            "nvmlDeviceGetPowerUsage": lambda h: 691_423,
            "nvmlDeviceGetTotalEnergyConsumption": lambda h: 3_887_737,
            "nvmlDeviceGetTemperature": self.not_supported,
            "nvmlDeviceGetClockInfo": lambda h, clock: 1_485,
        }
        for name, call in calls.items():
            monkeypatch.setattr(pynvml, name, call)

    def init(self):
        self.initialised += 1

    def shutdown(self):
        self.shut_down += 1

    @staticmethod
    def not_supported(*args):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_the_agent_records_a_reading_of_each_registered_gpu(probe, monkeypatch):
    nvml = FakeNvml(monkeypatch)
    out, err = io.StringIO(), io.StringIO()
    call_command("gpu_agent", "--host", telemetry.PROBE_HOST, "--once", stdout=out, stderr=err)
    sample = GpuSample.objects.get()
    assert sample.gpu == probe.gpu and abs(sample.time - timezone.now()) < timedelta(seconds=5)
    assert (
        sample.utilization_pct,
        sample.memory_utilization_pct,
        sample.memory_used_bytes,
        sample.power_mw,
        sample.energy_mj,
        sample.sm_clock_mhz,
    ) == (87, 24, 1_839_071_232, 691_423, 3_887_737, 1_485)
    assert sample.temperature_c is None  # NVML said "not supported"
    assert "GPU-00000000-not-registered is not registered" in err.getvalue()
    assert "Recorded 1 samples" in out.getvalue()
    assert (nvml.initialised, nvml.shut_down) == (1, 1)


def test_the_agent_reads_every_interval_until_stopped(probe, monkeypatch):
    FakeNvml(monkeypatch)
    slept, clock = [], [1_000.0]

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds + 0.25  # each reading and write takes a quarter of a second
        if len(slept) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    call_command(
        "gpu_agent",
        "--host",
        telemetry.PROBE_HOST,
        "--interval",
        "2",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert GpuSample.objects.count() == 3
    assert slept == [2.0, 1.75, 1.75]  # the pace is kept: readings stay 2 s apart


def test_without_nvml_the_agent_says_why(probe, monkeypatch):
    def missing():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    with pytest.raises(CommandError, match=r"NVIDIA driver loaded.*--replay FILE"):
        call_command("gpu_agent", "--host", telemetry.PROBE_HOST, "--once")


def test_the_agent_refuses_a_host_none_of_whose_gpus_nvml_sees(probe, monkeypatch):
    FakeNvml(monkeypatch)
    catalog_services.host_register(
        name="elsewhere",
        region=probe.region,
        report=synthesize_report(gpu="H200", count=1, seed="telemetry-elsewhere"),
        vcpus=16,
        ram_gib=125,
    )
    with pytest.raises(CommandError, match="is --host right"):
        call_command("gpu_agent", "--host", "elsewhere", "--once", stderr=io.StringIO())


# --- the instance page ------------------------------------------------------------------------


@pytest.fixture
def owner_client(probe):
    client = Client()
    client.force_login(probe.owner)
    return client


def test_the_instance_page_shows_the_telemetry_panel(probe, owner_client):
    instance = held(launch(probe), T0)
    replay()
    page = owner_client.get(f"/instances/{instance.pk}/").content.decode()
    assert 'id="gpu-telemetry"' in page and "GPU telemetry" in page
    assert page.count('<svg role="img"') == 2 and page.count("<polyline") == 2
    assert '<title id="telemetry-utilization-title">GPU utilisation (%)</title>' in page
    assert '<title id="telemetry-power-title">Power draw (W)</title>' in page
    assert "2.716 Wh" in page and "706.3 W" in page and f"{AVERAGE_UTIL:.1f} %" in page
    assert "No telemetry yet" not in page
    assert PROBE_UUID not in page and telemetry.PROBE_HOST not in page  # operators only
    # the status panel's polls do not carry it
    partial = owner_client.get(f"/instances/{instance.pk}/", HTTP_HX_REQUEST="true")
    assert "gpu-telemetry" not in partial.content.decode()


def test_the_page_says_when_there_is_nothing_or_nothing_per_slice(probe, owner_client):
    whole = held(launch(probe, "whole"), T0, T0 + timedelta(seconds=1))
    page = owner_client.get(f"/instances/{whole.pk}/").content.decode()
    assert "No telemetry yet" in page and "<svg" not in page
    mig = held(launch(probe, "slice", "mig_h200_1g_18gb"), T0 + timedelta(seconds=2))
    page = owner_client.get(f"/instances/{mig.pk}/").content.decode()
    assert "GPU telemetry is not measured per MIG slice" in page and "<svg" not in page


def test_the_page_of_another_organisation_shows_nothing_of_it(probe):
    instance = held(launch(probe), T0)
    replay()
    stranger = Client()
    stranger.force_login(factories.member(factories.organization(), "owner"))
    assert stranger.get(f"/instances/{instance.pk}/").status_code == 404


# --- the demo ---------------------------------------------------------------------------------


def test_the_demo_launches_onto_the_probe_host_and_replays_once(probe):
    line = telemetry.demo_telemetry(organization=probe.org)
    assert "100 samples, 2.716 Wh" in line and "(100 new)" in line
    instance = Instance.objects.get(organization=probe.org, name=telemetry.DEMO_INSTANCE)
    assert instance.host == probe.host
    assert instance_telemetry(instance).energy_mj == ENERGY_MJ
    again = telemetry.demo_telemetry(organization=probe.org)
    assert "(0 new)" in again and Instance.objects.count() == 1
    assert GpuSample.objects.count() == 100


def test_the_demo_leaves_a_gpu_held_by_someone_else_alone(probe):
    launch(probe)
    line = telemetry.demo_telemetry(organization=factories.organization())
    assert "held by something else" in line
    assert not GpuSample.objects.exists() and Instance.objects.count() == 1


def test_a_multi_gpu_instance_has_a_line_and_a_row_per_gpu_in_few_queries(probe, owner_client):
    host = catalog_services.host_register(
        name="h200-eight",
        region=probe.region,
        report=synthesize_report(gpu="H200", count=8, seed="telemetry-eight"),
        vcpus=224,
        ram_gib=2048,
    )
    two, _ = catalog_services.instance_type_upsert(
        name="gpu_2x_h200_sxm",
        gpu_model=GpuModel.objects.get(code="h200-sxm-141gb"),
        gpu_count=2,
        vcpus=4,
        ram_gib=32,
    )
    catalog_services.price_set(
        instance_type=two, region=probe.region, currency="USD", on_demand_per_hour="7.58"
    )
    instance = held(launch(probe, "pair", "gpu_2x_h200_sxm"), T0)
    uuids = [slot["gpu"] for slot in instance.allocation.gpu_slots]
    assert set(uuids) <= set(host.gpus.values_list("uuid", flat=True))
    telemetry_record(
        samples=[
            Sample(
                gpu_uuid=uuid,
                time=T0 + timedelta(seconds=i),
                utilization_pct=50 * position,
                power_mw=100_000 * (position + 1),
                energy_mj=1_000 * (position + 1) * i,
            )
            for position, uuid in enumerate(uuids)
            for i in range(10)
        ]
    )
    instance = Instance.objects.select_related("instance_type").get(pk=instance.pk)
    with factories.QueryCounter() as counted:
        result = instance_telemetry(instance)
    assert counted.n == 5
    assert [(g.position, g.energy_mj, g.peak_power_w) for g in result.gpus] == [
        (0, 9_000, 100.0),
        (1, 18_000, 200.0),
    ]
    assert result.energy_mj == 27_000 and result.average_utilization_pct == 25
    page = owner_client.get(f"/instances/{instance.pk}/").content.decode()
    assert page.count("<polyline") == 4 and "All GPUs" in page and "One line per GPU" in page


def test_the_demo_needs_a_type_that_fits_the_probe_host(probe):
    # the demo catalog's gpu_1x_h200_sxm (24 vCPUs, 225 GiB) does not fit the 16-vCPU host
    InstanceType.objects.filter(name="gpu_1x_h200_sxm").update(vcpus=24, ram_gib=225)
    line = telemetry.demo_telemetry(organization=probe.org)
    assert "fits h200-euc1-probe (16 vCPUs, 125 GiB)" in line
    assert not Instance.objects.exists() and not GpuSample.objects.exists()
