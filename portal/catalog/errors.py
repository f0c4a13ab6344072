"""Error codes of the catalog: hosts, instance types, prices, imports and capacity."""

from enum import StrEnum

from portal.errors import error_codes


@error_codes
class CatalogErrorCode(StrEnum):
    CAPACITY_UNAVAILABLE = "capacity_unavailable"
    CATALOG_INVALID = "catalog_invalid"
    COUNTRY_INVALID = "country_invalid"
    GPU_DUPLICATE = "gpu_duplicate"
    GPU_MODELS_MISSING = "gpu_models_missing"
    GPU_UNKNOWN = "gpu_unknown"
    HOST_EXISTS = "host_exists"
    HOST_INVALID = "host_invalid"
    INSTANCE_TYPE_EXISTS = "instance_type_exists"
    INSTANCE_TYPE_INVALID = "instance_type_invalid"
    MIG_PROFILES_DIFFER = "mig_profiles_differ"
    PRICE_EXISTS = "price_exists"
    PRICE_INVALID = "price_invalid"
    REGION_INVALID = "region_invalid"
    REPORT_INVALID = "report_invalid"
