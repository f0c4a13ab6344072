from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from portal.accounts.models import Currency
from portal.catalog.models import GpuModel, Image, MigProfile, Region
from portal.catalog.selectors import SORTS, CatalogQuery, offer_price, price_per_gpu_hour


class CatalogQuerySerializer(serializers.Serializer):
    """Query parameters of ``GET /api/v1/instance-types``."""

    currency = serializers.ChoiceField(
        choices=Currency.values,
        required=False,
        help_text=_("Defaults to the organisation's currency."),
    )
    gpu_model = serializers.CharField(
        required=False, help_text=_("GPU model code, e.g. h100-sxm5-80gb.")
    )
    gpu_count = serializers.IntegerField(required=False, min_value=1, max_value=64)
    min_gpu_memory_gb = serializers.IntegerField(required=False, min_value=1, max_value=100_000)
    region = serializers.CharField(
        required=False, help_text=_("Region code: price and availability there.")
    )
    max_price = serializers.DecimalField(
        required=False,
        max_digits=14,
        decimal_places=6,
        min_value=0,
        help_text=_("Per hour, in the currency."),
    )
    available = serializers.BooleanField(
        required=False, default=False, help_text=_("Only types with free capacity now.")
    )
    sort = serializers.ChoiceField(choices=list(SORTS), required=False, default="price")

    def to_query(self) -> CatalogQuery:
        data = {k: v for k, v in self.validated_data.items() if k != "currency"}
        return CatalogQuery(**data)


class RegionPriceSerializer(serializers.Serializer):
    region = serializers.CharField()
    on_demand_per_hour = serializers.DecimalField(max_digits=14, decimal_places=6)
    spot_per_hour = serializers.DecimalField(max_digits=14, decimal_places=6, allow_null=True)
    available = serializers.IntegerField(
        help_text=_("How many more instances fit there right now.")
    )


class SpecsSerializer(serializers.Serializer):
    gpu_model = serializers.CharField()
    gpu_model_code = serializers.CharField()
    gpu_count = serializers.IntegerField()
    mig_profile = serializers.CharField(allow_null=True)
    gpu_memory_gb = serializers.FloatField()
    vcpus = serializers.IntegerField()
    ram_gib = serializers.IntegerField()
    local_nvme_gb = serializers.IntegerField()
    interconnect = serializers.CharField()
    bf16_tflops = serializers.DecimalField(max_digits=8, decimal_places=1, allow_null=True)


class InstanceTypeSerializer(serializers.Serializer):
    """An offer: specs, prices per region in one currency, and where capacity is free now."""

    name = serializers.CharField()
    description = serializers.CharField()
    specs = serializers.SerializerMethodField()
    spot_allowed = serializers.BooleanField()
    currency = serializers.CharField()
    price_from_per_hour = serializers.SerializerMethodField()
    price_per_gpu_hour_from = serializers.SerializerMethodField()
    prices = serializers.SerializerMethodField()
    regions_with_capacity_available = serializers.ListField(
        child=serializers.CharField(), source="regions_with_capacity"
    )

    def get_specs(self, offer) -> SpecsSerializer:
        return SpecsSerializer(offer).data

    def get_price_from_per_hour(self, offer) -> serializers.DecimalField(
        max_digits=14, decimal_places=6
    ):
        return f"{offer_price(offer):.6f}"

    def get_price_per_gpu_hour_from(self, offer) -> serializers.DecimalField(
        max_digits=14, decimal_places=6
    ):
        return f"{price_per_gpu_hour(offer):.6f}"

    def get_prices(self, offer) -> RegionPriceSerializer(many=True):
        rows = [
            {
                "region": q.region,
                "on_demand_per_hour": q.on_demand_per_hour,
                "spot_per_hour": q.spot_per_hour,
                "available": offer.available.get(q.region, 0),
            }
            for q in offer.prices
        ]
        return RegionPriceSerializer(rows, many=True).data


_PRICE = serializers.DecimalField(max_digits=14, decimal_places=6)
_TFLOPS = serializers.DecimalField(max_digits=8, decimal_places=1)


def instance_type_rows(offers) -> list[dict]:
    """``InstanceTypeSerializer``'s output for ``offers``, without a serializer per offer and
    per region price (a catalog page is thousands of them); the same fields convert each
    value, so the output is the same."""
    price = _PRICE.to_representation
    rows = []
    for offer in offers:
        rows.append(
            {
                "name": offer.name,
                "description": offer.description,
                "specs": {
                    "gpu_model": offer.gpu_model,
                    "gpu_model_code": offer.gpu_model_code,
                    "gpu_count": offer.gpu_count,
                    "mig_profile": offer.mig_profile,
                    "gpu_memory_gb": float(offer.gpu_memory_gb),
                    "vcpus": offer.vcpus,
                    "ram_gib": offer.ram_gib,
                    "local_nvme_gb": offer.local_nvme_gb,
                    "interconnect": offer.interconnect,
                    "bf16_tflops": None
                    if offer.bf16_tflops is None
                    else _TFLOPS.to_representation(offer.bf16_tflops),
                },
                "spot_allowed": offer.spot_allowed,
                "currency": offer.currency,
                "price_from_per_hour": f"{offer_price(offer):.6f}",
                "price_per_gpu_hour_from": f"{price_per_gpu_hour(offer):.6f}",
                "prices": [
                    {
                        "region": q.region,
                        "on_demand_per_hour": price(q.on_demand_per_hour),
                        "spot_per_hour": None
                        if q.spot_per_hour is None
                        else price(q.spot_per_hour),
                        "available": offer.available.get(q.region, 0),
                    }
                    for q in offer.prices
                ],
                "regions_with_capacity_available": offer.regions_with_capacity,
            }
        )
    return rows


class RegionSerializer(serializers.ModelSerializer):
    country = serializers.CharField()

    class Meta:
        model = Region
        fields = ["code", "name", "country"]
        read_only_fields = fields


class MigProfileSerializer(serializers.ModelSerializer):
    class Meta:
        model = MigProfile
        fields = [
            "name",
            "profile_id",
            "memory_gib",
            "compute_slices",
            "memory_slots",
            "placements",
            "max_instances",
        ]
        read_only_fields = fields


class GpuModelSerializer(serializers.ModelSerializer):
    mig_profiles = MigProfileSerializer(many=True, read_only=True)

    class Meta:
        model = GpuModel
        fields = [
            "code",
            "name",
            "variant",
            "vendor",
            "architecture",
            "memory_gb",
            "memory_type",
            "memory_bandwidth_gb_s",
            "bf16_tflops",
            "tdp_w",
            "interconnect",
            "interconnect_gb_s",
            "mig_capable",
            "mig_profiles",
        ]
        read_only_fields = fields


class ImageSerializer(serializers.ModelSerializer):
    # Image names have dots ("ubuntu-24.04-cuda-13.0"), which a slug pattern would refuse.
    name = serializers.CharField(read_only=True)
    instance_types = serializers.SerializerMethodField(
        help_text=_("Names of the types this image supports; empty means every type.")
    )

    class Meta:
        model = Image
        fields = [
            "name",
            "description",
            "os",
            "cuda_version",
            "driver_version",
            "frameworks",
            "is_default",
            "instance_types",
        ]
        read_only_fields = fields

    def get_instance_types(self, image) -> list[str]:
        return sorted(t.name for t in image.instance_types.all())
