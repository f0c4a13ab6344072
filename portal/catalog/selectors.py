"""Reads of the catalog: offers (types with prices in one currency and live availability),
regions, images and GPU models.

``catalog_offers`` runs a fixed number of queries whatever the number of types, regions, prices
and hosts; filtering and sorting happen in memory on the result.
"""

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy

from portal.catalog import cache as catalog_cache
from portal.catalog.capacity import availability
from portal.catalog.models import GpuModel, Image, InstanceType, Price, Region
from portal.catalog.types import Offer, PriceQuote

SORTS = {
    "price": gettext_lazy("Price per hour"),
    "price_per_gpu": gettext_lazy("Price per GPU-hour"),
    "tflops_per_dollar": gettext_lazy("BF16 TFLOPS per dollar"),
    "name": gettext_lazy("Name"),
}


def prices_in_force(*, currency: str, at: datetime | None = None) -> dict[tuple[int, int], Price]:
    """(instance type id, region id) -> the price in force at ``at`` in ``currency``. One query."""
    latest: dict[tuple[int, int], Price] = {}
    rows = (
        Price.objects.filter(currency=currency, effective_from__lte=at or timezone.now())
        .order_by("effective_from", "id")
        .only("instance_type_id", "region_id", "on_demand_per_hour", "spot_per_hour", "currency")
    )
    for price in rows:
        latest[(price.instance_type_id, price.region_id)] = price
    return latest


# --- hourly prices over time -------------------------------------------------------------------

HOUR = timedelta(hours=1)


@dataclass
class PriceHistory:
    """One price over time: ``amounts[i]`` is in force from ``times[i]`` (ascending)."""

    times: list[datetime] = field(default_factory=list)
    amounts: list[Decimal] = field(default_factory=list)

    def at(self, moment: datetime) -> Decimal | None:
        """The price in force at ``moment`` (the start of an hour being rated); for an hour in
        which the first price appeared (a new type or meter), that first price: usage is never
        free by accident. None when nothing is priced yet."""
        index = bisect.bisect_right(self.times, moment) - 1
        if index >= 0:
            return self.amounts[index]
        if self.times and self.times[0] < moment + HOUR:
            return self.amounts[0]
        return None

    def changes_within(self, start: datetime, end: datetime) -> bool:
        """Whether a price takes effect in [start, end)."""
        index = bisect.bisect_left(self.times, start)
        return index < len(self.times) and self.times[index] < end

    def changes_in(self, start: datetime, end: datetime) -> list[datetime]:
        """The moments in [start, end) at which a price takes effect, in order."""
        return self.times[
            bisect.bisect_left(self.times, start) : bisect.bisect_left(self.times, end)
        ]


def price_histories(rows: Iterable[tuple[object, datetime, Decimal]]) -> dict:
    """key -> ``PriceHistory`` from (key, effective from, amount) rows in time order."""
    histories: dict = {}
    for key, effective_from, amount in rows:
        history = histories.get(key) or histories.setdefault(key, PriceHistory())
        history.times.append(effective_from)
        history.amounts.append(amount)
    return histories


class HourlyPrices:
    """The on-demand hourly prices of one currency, for every (instance type, region) over
    time, loaded in one query. Build it once per unit of work (a debit run, an invoice, a
    page) and ask it for each record; ``hourly_price`` asks it once."""

    def __init__(
        self, currency: str, *, instance_type_id: int | None = None, region_id: int | None = None
    ) -> None:
        self.currency = currency
        rows = Price.objects.filter(currency=currency)
        if instance_type_id is not None:
            rows = rows.filter(instance_type_id=instance_type_id)
        if region_id is not None:
            rows = rows.filter(region_id=region_id)
        self._histories: dict[tuple[int, int], PriceHistory] = price_histories(
            ((t, r), effective_from, amount)
            for t, r, effective_from, amount in rows.order_by("effective_from", "id").values_list(
                "instance_type_id", "region_id", "effective_from", "on_demand_per_hour"
            )
        )

    def at(self, *, instance_type_id, region_id, at: datetime) -> Decimal | None:
        """The hourly price of the type in the region at ``at`` (see ``PriceHistory.at``)."""
        history = self._histories.get((instance_type_id, region_id))
        return history.at(at) if history is not None else None

    def changes_within(
        self, *, instance_type_id, region_id, start: datetime, end: datetime
    ) -> bool:
        history = self._histories.get((instance_type_id, region_id))
        return history is not None and history.changes_within(start, end)

    def changes_in(
        self, *, instance_type_id, region_id, start: datetime, end: datetime
    ) -> list[datetime]:
        history = self._histories.get((instance_type_id, region_id))
        return history.changes_in(start, end) if history is not None else []


def price_changes_off_the_hour(start: datetime, end: datetime) -> list[tuple]:
    """(currency, instance type id, region id, moment) of every on-demand price taking effect in
    [start, end) at a moment that is not on the hour (the hours that need price periods)."""
    rows = Price.objects.filter(effective_from__gte=start, effective_from__lt=end).values_list(
        "currency", "instance_type_id", "region_id", "effective_from"
    )
    return [row for row in rows if row[3] != row[3].replace(minute=0, second=0, microsecond=0)]


def hourly_price(
    *, instance_type_id: int, region_id: int, currency: str, at: datetime | None = None
) -> Decimal | None:
    """The hourly on-demand price of this instance type in this region and currency at this
    moment (now when ``at`` is empty), by the rating rule of ``PriceHistory.at``; None when the
    type is not priced there. One query."""
    prices = HourlyPrices(currency, instance_type_id=instance_type_id, region_id=region_id)
    return prices.at(
        instance_type_id=instance_type_id, region_id=region_id, at=at or timezone.now()
    )


def catalog_offers(
    *, currency: str, at: datetime | None = None, version: int | None = None
) -> list[Offer]:
    """Every active type with a price in ``currency``: its specs, prices per region and how many
    more instances fit per region right now. A type with no price in the currency is not offered
    (no conversion is guessed).

    Offers of now are cached under the catalog version (``portal.catalog.cache``): pass the
    ``version`` read at the start of a request to save its query. Offers of another moment
    (``at``) are built afresh."""
    if at is not None:
        return _build_offers(currency=currency, at=at)[0]
    return catalog_offers_until(currency=currency, version=version)[0]


def catalog_offers_until(
    *, currency: str, version: int | None = None
) -> tuple[list[Offer], datetime | None]:
    """``catalog_offers`` of now, and when they stop holding: the moment the next scheduled
    price in the currency takes effect (None when none is scheduled). What is cached from the
    offers must not outlive that moment."""

    def build():
        offers, until = _build_offers(currency=currency, at=timezone.now())
        return (offers, until), until

    return catalog_cache.remember(
        "offers",
        (currency,),
        build,
        version=catalog_cache.catalog_version() if version is None else version,
    )


def _prices_now_and_next(
    currency: str, at: datetime
) -> tuple[dict[tuple[int, int], Price], datetime | None]:
    """``prices_in_force`` at ``at`` and when the next scheduled price takes effect, in one
    query."""
    latest: dict[tuple[int, int], Price] = {}
    next_change = None
    rows = (
        Price.objects.filter(currency=currency)
        .order_by("effective_from", "id")
        .only(
            "instance_type_id",
            "region_id",
            "on_demand_per_hour",
            "spot_per_hour",
            "currency",
            "effective_from",
        )
    )
    for price in rows:
        if price.effective_from <= at:
            latest[(price.instance_type_id, price.region_id)] = price
        elif next_change is None:
            next_change = price.effective_from
    return latest, next_change


def _build_offers(*, currency: str, at: datetime) -> tuple[list[Offer], datetime | None]:
    """The offers at ``at`` and until when they hold (the next scheduled price, or None)."""
    types = list(
        InstanceType.objects.filter(is_active=True).select_related("gpu_model", "mig_profile")
    )
    regions = {r.pk: r.code for r in Region.objects.filter(is_active=True)}
    prices, next_change = _prices_now_and_next(currency, at)
    free = availability(types, regions)
    by_type: dict[int, list[tuple[str, Price]]] = {}
    for (type_id, region_id), price in prices.items():
        if region_id in regions:
            by_type.setdefault(type_id, []).append((regions[region_id], price))
    offers = []
    for t in types:
        quotes = tuple(
            PriceQuote(
                region=code,
                currency=currency,
                on_demand_per_hour=price.on_demand_per_hour,
                spot_per_hour=price.spot_per_hour if t.spot_allowed else None,
            )
            for code, price in sorted(by_type.get(t.pk, []), key=lambda item: item[0])
        )
        if not quotes:
            continue
        offers.append(
            Offer(
                instance_type_id=t.pk,
                name=t.name,
                description=t.description,
                gpu_model=str(t.gpu_model),
                gpu_model_code=t.gpu_model.code,
                gpu_count=t.gpu_count,
                mig_profile=t.mig_profile.name if t.mig_profile else None,
                gpu_memory_gb=t.gpu_memory_gb,
                vcpus=t.vcpus,
                ram_gib=t.ram_gib,
                local_nvme_gb=t.local_nvme_gb,
                interconnect=t.get_interconnect_display(),
                spot_allowed=t.spot_allowed,
                bf16_tflops=t.gpu_model.bf16_tflops,
                currency=currency,
                prices=quotes,
                available=free.get(t.pk, {}),
            )
        )
    return offers, next_change


@dataclass(frozen=True)
class CatalogQuery:
    """Filters and sort order for the catalog page and ``GET /api/v1/instance-types``."""

    gpu_model: str = ""
    gpu_count: int | None = None
    min_gpu_memory_gb: int | None = None
    region: str = ""
    max_price: Decimal | None = None
    available: bool = False
    sort: str = "price"


def offer_price(offer: Offer, region: str = "") -> Decimal | None:
    """The hourly on-demand price shown for an offer: in ``region``, or the lowest anywhere."""
    amounts = [q.on_demand_per_hour for q in offer.prices if not region or q.region == region]
    return min(amounts) if amounts else None


def gpu_fraction(offer: Offer) -> Decimal:
    """How much of a GPU one instance is: its GPU count, or its MIG slice's share (n/7)."""
    if offer.mig_profile:
        return Decimal(int(offer.mig_profile.split("g.", 1)[0])) / Decimal(7)
    return Decimal(offer.gpu_count)


def price_per_gpu_hour(offer: Offer, region: str = "") -> Decimal | None:
    price = offer_price(offer, region)
    return price / gpu_fraction(offer) if price is not None else None


def tflops_per_dollar(offer: Offer, region: str = "") -> Decimal | None:
    price = offer_price(offer, region)
    if price is None or not offer.bf16_tflops:
        return None
    return offer.bf16_tflops * gpu_fraction(offer) / price


def filter_offers(offers: list[Offer], query: CatalogQuery) -> list[Offer]:
    selected = []
    for offer in offers:
        if query.gpu_model and offer.gpu_model_code != query.gpu_model:
            continue
        if query.gpu_count is not None and (
            offer.mig_profile or offer.gpu_count != query.gpu_count
        ):
            continue
        if query.min_gpu_memory_gb is not None and offer.gpu_memory_gb < query.min_gpu_memory_gb:
            continue
        price = offer_price(offer, query.region)
        if price is None:  # not sold in that region
            continue
        if query.max_price is not None and price > query.max_price:
            continue
        if query.available and not (
            offer.available.get(query.region, 0) if query.region else offer.regions_with_capacity
        ):
            continue
        selected.append(offer)
    region = query.region
    keys = {
        "price": lambda o: (offer_price(o, region), o.name),
        "price_per_gpu": lambda o: (price_per_gpu_hour(o, region), o.name),
        "tflops_per_dollar": lambda o: (-(tflops_per_dollar(o, region) or Decimal(0)), o.name),
        "name": lambda o: (o.name,),
    }
    return sorted(selected, key=keys.get(query.sort, keys["price"]))


def regions_list() -> QuerySet[Region]:
    return Region.objects.filter(is_active=True)


def storage_price_per_gb_month(currency: str) -> Decimal | None:
    """What a GB of volume or kept boot disk costs a month in ``currency``
    (``STORAGE_PRICE_PER_GB_MONTH``, what rating charges); None when it has no price there."""
    price = settings.STORAGE_PRICE_PER_GB_MONTH.get(currency)
    return Decimal(price) if price is not None else None


def regions_with_capacity(*, currency: str) -> list[str]:
    """The region codes where at least one catalog type priced in ``currency`` has room now."""
    offers = catalog_offers(currency=currency)
    return sorted({code for offer in offers for code in offer.regions_with_capacity})


def gpu_models_list() -> QuerySet[GpuModel]:
    return GpuModel.objects.all()


def gpu_models_offered() -> QuerySet[GpuModel]:
    return GpuModel.objects.filter(instance_types__is_active=True).distinct()


def catalog_filter_choices(*, version: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """What the catalog's filters offer: (code, name) of the GPU models of active types and of
    the active regions. Cached under the catalog version."""

    def build():
        choices = {
            "gpu_models": [(m.code, str(m)) for m in gpu_models_offered()],
            "regions": [(r.code, r.name) for r in regions_list()],
        }
        return choices, None

    return catalog_cache.remember(
        "filter-choices",
        (),
        build,
        version=catalog_cache.catalog_version() if version is None else version,
    )


def images_list() -> QuerySet[Image]:
    return Image.objects.filter(is_active=True).prefetch_related("instance_types")


def images_for(instance_type: InstanceType) -> QuerySet[Image]:
    """Images that support a type: those listing it, and those listing no type at all."""
    return (
        Image.objects.filter(is_active=True)
        .filter(Q(instance_types=instance_type) | Q(instance_types__isnull=True))
        .distinct()
    )
