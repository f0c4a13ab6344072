"""``manage.py import_catalog``: SkyPilot catalog CSVs into instance types and USD prices."""

from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from portal.catalog import importers, services
from portal.catalog.importers import (
    CPU_ONLY,
    GPU_COUNT_FRACTIONAL,
    GPU_SEPARATE,
    NO_INSTANCE_TYPE,
    NO_PRICE,
    PRICE_NOT_NUMBER,
    PRICE_NOT_POSITIVE,
    SPECS_DIFFER,
    UnmappedRow,
    catalog_import,
)
from portal.catalog.models import InstanceType, Price, Region
from portal.errors import InvalidInput

CATALOG = Path(__file__).resolve().parents[1] / "data" / "catalog"  # see its README

# Per file: rows, instance types, regions, prices, and the rows not imported by reason. Worked
# out by running the import, then checked against the CSVs independently (rows with an
# InstanceType, a known accelerator and a positive price; distinct InstanceTypes, distinct
# (InstanceType, Region) pairs and Regions among them):
# - aws: 8 types, but p5e.48xlarge has no on-demand price in any of its 9 rows and
#   p6-b300.48xlarge is a B300 (not a known GPU); 125 AZ rows make 51 (type, region) prices.
# - gcp: a2/a3/a4 VM rows price the host only (a4-highgpu-8g even 0.0) and the accelerator rows
#   have no InstanceType, so nothing maps: 296 + 11 + 364 = 671.
# - lambda: 24 types x 17 regions; 2 CPU types, 2 V100, 3 A6000 and 1 RTX6000 (Turing) types are
#   reported (8 x 17 = 136 rows); 16 x 17 = 272 prices.
# - runpod: 750 CPU rows; 8 unknown GPUs x 4 counts x 25 AZ rows, plus RTXA6000 with 86 rows;
#   11 known GPUs x 4 counts = 44 types in 8 countries = 352 prices.
# - verda: 5 rows with an empty Price (2B300, 2B200, 4B200, 8B200, 8RTXPRO6000).
EXPECTED = {
    "aws.csv": (135, 6, 17, 51, {NO_PRICE: 9, "unknown accelerator B300": 1}),
    "digitalocean.csv": (38, 2, 1, 2, {CPU_ONLY: 36}),
    "gcp.csv": (
        671,
        0,
        0,
        0,
        {NO_INSTANCE_TYPE: 364, GPU_SEPARATE: 296, PRICE_NOT_POSITIVE: 11},
    ),
    "lambda.csv": (
        408,
        16,
        17,
        272,
        {
            "unknown accelerator A6000": 51,
            CPU_ONLY: 34,
            "unknown accelerator V100": 34,
            "unknown accelerator RTX6000": 17,
        },
    ),
    "nebius.csv": (61, 17, 3, 21, {CPU_ONLY: 40}),
    "paperspace.csv": (
        19,
        4,
        1,
        4,
        {
            CPU_ONLY: 5,
            "unknown accelerator A4000": 3,
            "unknown accelerator V100-32GB": 3,
            "unknown accelerator P4000": 2,
            "unknown accelerator M4000": 1,
            "unknown accelerator V100": 1,
        },
    ),
    "runpod.csv": (
        2750,
        44,
        8,
        352,
        {
            CPU_ONLY: 750,
            **{
                f"unknown accelerator {name}": 100
                for name in (
                    "A40",
                    "L40",
                    "RTX3090",
                    "RTX4000-Ada",
                    "RTX4090",
                    "RTXA4000",
                    "RTXA4500",
                    "RTXA5000",
                )
            },
            "unknown accelerator RTXA6000": 86,
        },
    ),
    "vast.csv": (
        67,
        20,
        15,
        25,
        {
            "unknown accelerator RTX4090": 13,
            "unknown accelerator RTX5090": 11,
            "unknown accelerator RTXA2000": 3,
            "unknown accelerator A40": 2,
            "unknown accelerator RTX3060": 2,
            "unknown accelerator RTX3070": 2,
            "unknown accelerator RTX3090": 2,
            "unknown accelerator RTXA6000": 2,
            "unknown accelerator RTX3080": 1,
            "unknown accelerator RTX4060": 1,
            "unknown accelerator RTX4070": 1,
            "unknown accelerator RTXPRO6000S": 1,
            "unknown accelerator V100": 1,
        },
    ),
    "verda.csv": (
        33,
        8,
        3,
        11,
        {
            CPU_ONLY: 11,
            NO_PRICE: 5,
            "unknown accelerator RTX-PRO-6000": 3,
            "unknown accelerator B300": 2,
            "unknown accelerator V100": 1,
        },
    ),
}

HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region"


@pytest.fixture
def catalog() -> Path:
    return CATALOG


@pytest.fixture
def shared_gpu_models(db, catalog):
    services.gpu_models_load(path=catalog / "gpus.csv")


def write_csv(tmp_path: Path, *lines: str, name: str = "test.csv", crlf: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + b"\n")
    return path


def import_file(path: Path, provider: str = "test") -> importers.ImportResult:
    return catalog_import(path=path, provider=provider)


def price(provider_name: str, region: str, provider: str) -> Price:
    return Price.objects.get(
        instance_type__provider=provider,
        instance_type__provider_name=provider_name,
        region__code=region,
    )


# --- every file of the catalog data ---------------------------------------------------------------


def test_every_catalog_file_has_expected_counts(catalog):
    assert {p.name for p in catalog.glob("*.csv")} - {"gpus.csv"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_import_catalog_file(shared_gpu_models, catalog, name):
    rows, types, regions, prices, by_reason = EXPECTED[name]
    provider = name.removesuffix(".csv")

    result = import_file(catalog / name, provider)

    assert (result.rows, result.types_created, result.regions_created, result.prices_created) == (
        rows,
        types,
        regions,
        prices,
    )
    assert (result.types_updated, result.types_unchanged, result.prices_unchanged) == (0, 0, 0)
    assert result.unmapped_by_reason() == by_reason
    assert len(result.unmapped) == sum(by_reason.values())
    assert InstanceType.objects.filter(provider=provider).count() == types
    assert Price.objects.filter(currency="USD").count() == prices
    assert Region.objects.count() == regions
    # Every reported row names its line, type and region as the CSV has them.
    lines = [row.line for row in result.unmapped]
    assert lines == sorted(set(lines))
    assert all(2 <= line <= rows + 1 for line in lines)

    again = import_file(catalog / name, provider)

    assert (again.types_created, again.types_updated, again.types_unchanged) == (0, 0, types)
    assert (again.prices_created, again.prices_unchanged, again.regions_created) == (0, prices, 0)
    assert again.unmapped == result.unmapped
    assert Price.objects.count() == prices


# --- spot checks against the real files -----------------------------------------------------------


def test_lambda_types_prices_and_reported_rows(shared_gpu_models, catalog):
    result = import_file(catalog / "lambda.csv", "lambda")

    h100 = InstanceType.objects.get(name="gpu_8x_h100_sxm5")
    assert (h100.provider, h100.provider_name) == ("lambda", "gpu_8x_h100_sxm5")
    assert (h100.gpu_model.code, h100.gpu_count, h100.vcpus, h100.ram_gib) == (
        "h100-sxm5-80gb",
        8,
        208,
        1800,
    )
    assert (h100.interconnect, h100.spot_allowed) == ("nvlink", False)
    # lambda.csv line 332: gpu_8x_h100_sxm5,H100,8.0,208.0,1800.0,31.92,us-east-1,...
    in_us_east = price("gpu_8x_h100_sxm5", "us-east-1", "lambda")
    assert (in_us_east.on_demand_per_hour, in_us_east.spot_per_hour) == (Decimal("31.92"), None)
    assert in_us_east.currency == "USD"
    assert h100.prices.count() == 17
    assert InstanceType.objects.get(name="gpu_1x_h100_pcie").gpu_model.code == "h100-pcie-80gb"
    assert InstanceType.objects.get(name="gpu_1x_gh200").gpu_model.code == "gh200-grace-hopper-96gb"
    assert not InstanceType.objects.filter(provider_name__startswith="cpu_").exists()
    assert result.unmapped[0] == UnmappedRow(
        line=2, instance_type="cpu_4x_generalx", region="europe-central-1", reason=CPU_ONLY
    )
    v100 = [row for row in result.unmapped if row.instance_type == "gpu_8x_v100"]
    assert len(v100) == 17
    assert {row.reason for row in v100} == {"unknown accelerator V100"}


def test_aws_takes_the_lowest_spot_price_of_the_zones(shared_gpu_models, catalog):
    result = import_file(catalog / "aws.csv", "aws")

    p5 = InstanceType.objects.get(provider="aws", provider_name="p5.48xlarge")
    assert p5.name == "p5_48xlarge"
    assert (p5.gpu_model.code, p5.gpu_count, p5.vcpus, p5.ram_gib) == (
        "h100-sxm5-80gb",
        8,
        192,
        2048,
    )
    assert p5.spot_allowed
    # us-east-1 has 7 zones (lines 59-65), all 55.04 on demand; spot from 10.2397 (use1-atl2-az1)
    # to 55.04.
    us_east = price("p5.48xlarge", "us-east-1", "aws")
    assert (us_east.on_demand_per_hour, us_east.spot_per_hour) == (
        Decimal("55.04"),
        Decimal("10.2397"),
    )
    # eu-north-1 (lines 53-55): two zones publish no spot price, the third 28.3188.
    eu_north = price("p5.48xlarge", "eu-north-1", "aws")
    assert (eu_north.on_demand_per_hour, eu_north.spot_per_hour) == (
        Decimal("58.8928"),
        Decimal("28.3188"),
    )
    # p5e.48xlarge (lines 97-105) never has an on-demand price: reported, not created.
    assert not InstanceType.objects.filter(provider_name="p5e.48xlarge").exists()
    p5e = [row for row in result.unmapped if row.instance_type == "p5e.48xlarge"]
    assert [row.line for row in p5e] == list(range(97, 106))
    assert {row.reason for row in p5e} == {NO_PRICE}


def test_runpod_plain_h100_is_pcie_and_h100_sxm_is_sxm(shared_gpu_models, catalog):
    import_file(catalog / "runpod.csv", "runpod")

    def gpu(provider_name: str) -> str:
        return InstanceType.objects.get(
            provider="runpod", provider_name=provider_name
        ).gpu_model.code

    # RunPod's catalog names both H100 (the PCIe card) and H100-SXM; likewise A100-80GB.
    assert gpu("1x_H100_SECURE") == "h100-pcie-80gb"
    assert gpu("8x_H100-SXM_SECURE") == "h100-sxm5-80gb"
    assert gpu("2x_H100-NVL_SECURE") == "h100-nvl-94gb"
    assert gpu("8x_A100-80GB_SECURE") == "a100-pcie-80gb"
    assert gpu("8x_A100-80GB-SXM_SECURE") == "a100-sxm4-80gb"
    assert gpu("4x_H200-SXM_SECURE") == "h200-sxm-141gb"
    # Lines 313-326 (US, 14 data centres): 2.39, no spot; lines 413-426: 2.99, spot 2.69.
    pcie = price("1x_H100_SECURE", "us", "runpod")
    assert (pcie.on_demand_per_hour, pcie.spot_per_hour) == (Decimal("2.39"), None)
    sxm = price("1x_H100-SXM_SECURE", "us", "runpod")
    assert (sxm.on_demand_per_hour, sxm.spot_per_hour) == (Decimal("2.99"), Decimal("2.69"))
    assert InstanceType.objects.get(provider_name="1x_H100-SXM_SECURE").name == "1x_h100-sxm_secure"
    assert Region.objects.get(code="us").name == "US"


def test_vast_refines_variants_from_the_instance_name(shared_gpu_models, catalog):
    import_file(catalog / "vast.csv", "vast")

    a100 = InstanceType.objects.get(provider="vast", provider_name="1x-A100_PCIE-32-65536")
    assert a100.gpu_model.code == "a100-pcie-80gb"
    assert not a100.spot_allowed  # Vast writes SpotPrice 0.00: no spot price
    nvl = InstanceType.objects.get(provider="vast", provider_name="2x-H100_NVL-32-65536")
    assert nvl.gpu_model.code == "h100-nvl-94gb"
    # vast.csv line 53: ...,0.87,0.00,"Oklahoma, US, NA"
    oklahoma = Region.objects.get(code="oklahoma-us-na")
    assert oklahoma.name == "Oklahoma, US, NA"
    assert a100.prices.get(region=oklahoma).on_demand_per_hour == Decimal("0.87")
    assert a100.prices.get(region=oklahoma).spot_per_hour is None


def test_gcp_vm_and_accelerator_rows_are_reported(shared_gpu_models, catalog):
    result = import_file(catalog / "gcp.csv", "gcp")

    by_line = {row.line: row for row in result.unmapped}
    assert by_line[2] == UnmappedRow(2, "a2-highgpu-1g", "asia-northeast1", GPU_SEPARATE)
    assert by_line[298] == UnmappedRow(298, "a4-highgpu-8g", "asia-northeast1", PRICE_NOT_POSITIVE)
    assert by_line[309].instance_type == ""
    assert by_line[309].reason == NO_INSTANCE_TYPE
    assert not InstanceType.objects.exists()


def test_verda_empty_price_is_reported(shared_gpu_models, catalog):
    result = import_file(catalog / "verda.csv", "verda")

    assert UnmappedRow(3, "2B300.60V", "FIN-03", NO_PRICE) in result.unmapped
    assert not InstanceType.objects.filter(provider_name="2B200.60V").exists()
    assert InstanceType.objects.get(provider_name="1B200.30V").name == "1b200_30v"


# --- rules, on small files ------------------------------------------------------------------------


def test_rows_group_by_type_and_region_with_crlf_and_bom(shared_gpu_models, tmp_path):
    path = write_csv(
        tmp_path,
        # columns in another order, as the real files have them
        "\ufeffRegion,SpotPrice,Price,MemoryGiB,vCPUs,AcceleratorCount,AcceleratorName,InstanceType",
        "us-east,1.50,4.00,200.4,26.6,8.0,H100,Big.Box/8",
        "us-east,0.00,3.50,200.4,26.6,8.0,H100,Big.Box/8",
        "us-east,,3.75,200.4,26.6,8.0,H100,Big.Box/8",
        "us-east,1.20,0.0,200.4,26.6,8.0,H100,Big.Box/8",
        "East Coast (NY2),,5.00,200.4,26.6,8.0,H100,Big.Box/8",
        "us-east,,1.00,0.4,0.2,1,h100-pcie,tiny_pcie",
        "us-east,,1.00,16,8,1,H100,nvlink_box",
        "us-east,,2.00,16,8,1,H100,h100_nvl",
        "us-east,,9.00,16,8,0.5,H100,half",
        "us-east,,1.00,16,8,,,cpu-only",
        "us-east,,1.00,16,8,1,V100,old",
        "us-east,,abc,16,8,1,H100,garbled",
        "us-east,,-1,16,8,1,H100,negative",
        "us-east,,1.00,16,8,1,H100,",
        "us-east,,9.00,16,8,2,H100,nvlink_box",
        crlf=True,
    )

    result = import_file(path)

    box = InstanceType.objects.get(provider="test", provider_name="Big.Box/8")
    assert (box.name, box.vcpus, box.ram_gib, box.gpu_count, box.spot_allowed) == (
        "big_box_8",
        27,
        200,
        8,
        True,
    )
    us_east = box.prices.get(region__code="us-east")
    # lowest on-demand (3.50 of 4.00/3.50/3.75; the 0.0 row is reported) and lowest positive spot
    assert (us_east.on_demand_per_hour, us_east.spot_per_hour) == (Decimal("3.5"), Decimal("1.5"))
    ny2 = box.prices.get(region__code="east-coast-ny2")
    assert (ny2.on_demand_per_hour, ny2.spot_per_hour, ny2.region.name) == (
        Decimal("5"),
        None,
        "East Coast (NY2)",
    )
    tiny = InstanceType.objects.get(provider_name="tiny_pcie")
    assert (tiny.gpu_model.code, tiny.vcpus, tiny.ram_gib) == ("h100-pcie-80gb", 1, 1)
    assert InstanceType.objects.get(provider_name="nvlink_box").gpu_model.code == "h100-sxm5-80gb"
    assert InstanceType.objects.get(provider_name="h100_nvl").gpu_model.code == "h100-nvl-94gb"
    assert [(row.line, row.instance_type, row.reason) for row in result.unmapped] == [
        (5, "Big.Box/8", PRICE_NOT_POSITIVE),
        (10, "half", GPU_COUNT_FRACTIONAL),
        (11, "cpu-only", CPU_ONLY),
        (12, "old", "unknown accelerator V100"),
        (13, "garbled", PRICE_NOT_NUMBER),
        (14, "negative", PRICE_NOT_POSITIVE),
        (15, "", NO_INSTANCE_TYPE),
        (16, "nvlink_box", SPECS_DIFFER),
    ]
    assert (result.rows, result.types_created, result.prices_created) == (15, 4, 5)
    assert result.unmapped_by_reason() == {
        PRICE_NOT_POSITIVE: 2,
        CPU_ONLY: 1,
        NO_INSTANCE_TYPE: 1,
        PRICE_NOT_NUMBER: 1,
        SPECS_DIFFER: 1,
        GPU_COUNT_FRACTIONAL: 1,
        "unknown accelerator V100": 1,
    }


def test_a_new_price_or_spec_is_an_update(shared_gpu_models, tmp_path):
    path = write_csv(tmp_path, HEADER, "box,H100,1,8,64,2.00,,us-east", "box,H100,1,8,64,2.00,,eu")
    import_file(path)
    write_csv(tmp_path, HEADER, "box,H100,1,8,96,2.10,,us-east", "box,H100,1,8,96,2.00,,eu")

    result = import_file(path)

    assert (result.types_created, result.types_updated, result.types_unchanged) == (0, 1, 0)
    assert (result.prices_created, result.prices_unchanged) == (1, 1)
    box = InstanceType.objects.get(provider_name="box")
    assert box.ram_gib == 96
    in_force = services.price_in_force(
        instance_type=box, region=Region.objects.get(code="us-east"), currency="USD"
    )
    assert in_force.on_demand_per_hour == Decimal("2.10")
    assert Price.objects.count() == 3


def test_names_that_slug_alike_stay_separate_types(shared_gpu_models, tmp_path):
    path = write_csv(tmp_path, HEADER, "a.b,H100,1,8,64,2,,r1", "a_b,H100,2,16,128,4,,r1")

    import_file(path)
    import_file(path)

    first = InstanceType.objects.get(provider_name="a.b")
    second = InstanceType.objects.get(provider_name="a_b")
    assert first.name == "a_b"
    assert second.name.startswith("a_b_") and second.gpu_count == 2
    assert InstanceType.objects.count() == 2


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (HEADER.replace(",Price", "") + "\nbox,H100,1,8,64,,us-east\n", "missing column Price"),
        (b"This is a note, not a catalog.\nIt has two lines.\n", "not a SkyPilot catalog CSV"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a CSV text file"),
        (b"Instance,caf\xe9\n", "not UTF-8"),
        (b"", "empty"),
    ],
)
def test_a_file_that_is_not_a_catalog_is_refused(shared_gpu_models, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)

    with pytest.raises(InvalidInput) as caught:
        import_file(path)

    assert caught.value.code == "catalog_invalid"
    assert message in caught.value.message
    assert not InstanceType.objects.exists()


def test_a_missing_file_is_refused(shared_gpu_models, tmp_path):
    with pytest.raises(InvalidInput) as caught:
        import_file(tmp_path / "nope.csv")
    assert caught.value.code == "catalog_invalid"


def test_without_gpu_models_nothing_can_map(db, tmp_path):
    path = write_csv(tmp_path, HEADER, "box,H100,1,8,64,2,,r1")
    with pytest.raises(InvalidInput) as caught:
        import_file(path)
    assert caught.value.code == "gpu_models_missing"


def test_an_error_mid_import_leaves_nothing_behind(shared_gpu_models, catalog, monkeypatch):
    real_price_set = services.price_set
    calls = []

    def failing_price_set(**kwargs):
        calls.append(kwargs)
        if len(calls) == 5:
            raise InvalidInput("Simulated failure.", code="price_invalid")
        return real_price_set(**kwargs)

    monkeypatch.setattr(services, "price_set", failing_price_set)

    with pytest.raises(InvalidInput, match="Simulated failure"):
        import_file(catalog / "lambda.csv", "lambda")

    assert len(calls) == 5
    assert not InstanceType.objects.exists()
    assert not Price.objects.exists()
    assert not Region.objects.exists()

    calls.clear()
    with pytest.raises(CommandError, match="Simulated failure"):
        call_command("import_catalog", str(catalog / "nebius.csv"), provider="nebius")
    assert not InstanceType.objects.exists()
    assert not Price.objects.exists()


# --- the command ----------------------------------------------------------------------------------


def test_command_prints_a_summary_and_unmapped_rows(shared_gpu_models, catalog):
    out = StringIO()
    call_command("import_catalog", str(catalog / "verda.csv"), provider="verda", stdout=out)
    text = out.getvalue()

    assert "33 rows, 11 imported, 22 not imported" in text
    assert "instance types: 8 created, 0 updated, 0 unchanged" in text
    assert "prices (USD): 11 created, 0 unchanged" in text
    assert f"   11  {CPU_ONLY}" in text
    assert f"    5  {NO_PRICE}  (e.g. line 3 2B300.60V in FIN-03;" in text
    assert "line 3: 2B300.60V" not in text  # every row only with --verbose

    out = StringIO()
    call_command(
        "import_catalog", str(catalog / "verda.csv"), provider="verda", verbose=True, stdout=out
    )
    text = out.getvalue()
    assert "instance types: 0 created, 0 updated, 8 unchanged" in text
    assert "prices (USD): 0 created, 11 unchanged" in text
    assert f"line 3: 2B300.60V in FIN-03: {NO_PRICE}" in text
    assert text.count("\n  line ") == 22


def test_command_turns_bad_input_into_a_command_error(shared_gpu_models, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_catalog", str(tmp_path / "nope.csv"), provider="x")
    path = write_csv(tmp_path, "name,price", "box,1")
    with pytest.raises(CommandError, match="missing columns"):
        call_command("import_catalog", str(path), provider="x")
