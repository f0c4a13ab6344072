"""The burn figure: what an organisation owes for usage not debited yet, and what it is billed
per hour now, kept in one row (``BurnFigure``) so that a launch's credit check reads it in one
query instead of replaying the lifecycle of the organisation's whole fleet.

How it is kept
--------------
- every change that starts or stops billing calls ``burn_footprint_changed`` in its own
  transaction, under the organisation's lock (compute's ``COMPUTE_FOOTPRINT_HOOKS``: a launch,
  each lifecycle transition, a volume made or deleted): what was billed since ``as_of`` is
  added to ``undebited`` at the rates in force (rounded up), then the rates change;
- each usage debit takes its cost (rounded down) off ``undebited`` in the debit's transaction
  (``burn_debited``), so the balance less ``undebited`` does not move when usage is debited;
- ``burn_reconcile`` recomputes it all from the records and the lifecycle (the old, full
  computation): when a figure is first needed, when a price took effect or was set since the
  last one, when usage events arrived since, and when it is older than
  ``BILLING_BURN_RECONCILE_SECONDS`` (a periodic task may also call it without the
  organisation's lock: its result is kept only if nothing moved meanwhile). Drift (a change
  made around the services, such as an edit in the database) lasts until then.

It never counts less than is owed: accruals are rounded up, a change dated before ``as_of``
is charged from its own moment, and anything it cannot follow (prices, usage events) makes the
next check reconcile first.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Min
from django.utils import timezone

from billing.models import Account, BillingProfile, BurnFigure
from portal.accounts.models import Organization
from portal.catalog.models import Price
from portal.catalog.selectors import hourly_price
from portal.compute.selectors import organization_billed_now
from portal.compute.types import FootprintChange
from portal.metering.lifecycle_usage import seconds
from portal.metering.models import MeterPrice
from portal.metering.rating import (
    SECONDS_PER_HOUR,
    SECONDS_PER_MONTH,
    Rater,
    no_gpu_hourly_price,
)
from portal.money import RATING_PLACES
from portal.sql import Columns, execute, rows

RATING_UNIT = Decimal(1).scaleb(-RATING_PLACES)
# Usage events being written when a reconciliation reads them may commit a moment later with
# an earlier ``received_at``: events received this long before it make the next check reconcile.
EVENTS_MARGIN = timedelta(minutes=1)


def _up(amount: Decimal) -> Decimal:
    return amount.quantize(RATING_UNIT, rounding=ROUND_CEILING)


def _storage_price(currency: str) -> Decimal:
    return Decimal(settings.STORAGE_PRICE_PER_GB_MONTH[currency])


def storage_rate(size_gb: int, currency: str) -> Decimal:
    """What ``size_gb`` of storage costs per hour (metering's ``storage_per_hour``, to the last
    digit, without loading a price history)."""
    return Decimal(size_gb) * _storage_price(currency) * SECONDS_PER_HOUR / SECONDS_PER_MONTH


def _billed(figure: BurnFigure, start: datetime, end: datetime) -> Decimal:
    """What the figure's rates bill over [start, end), rounded up."""
    if end <= start:
        return Decimal(0)
    span = seconds(end - start)
    return _up(
        figure.running_per_hour * span / SECONDS_PER_HOUR
        + Decimal(figure.billed_gb) * _storage_price(figure.currency) * span / SECONDS_PER_MONTH
    )


@dataclass(frozen=True)
class BurnNow:
    """The figure read at ``at``: the ledger ``balance``, usage not debited yet (``undebited``,
    never less than owed), the committed burn per hour (compute and storage), and the
    organisation's billing profile (read in the same query; None when it has none)."""

    balance: Decimal
    undebited: Decimal
    committed_per_hour: Decimal
    at: datetime
    profile: BillingProfile | None = None

    @property
    def available_balance(self) -> Decimal:
        """The balance less usage not debited yet (what ``ledger.services.balance`` says)."""
        return self.balance - self.undebited


PROFILE_FIELDS = ("monthly_spend_limit", "spend_limit_mode", "credit_limit")
_FIGURE = Columns(BurnFigure, "f")
_READ_FIELDS = [
    *_FIGURE.fields,
    Account._meta.get_field("balance"),
    None,
    *(BillingProfile._meta.get_field(name) for name in PROFILE_FIELDS),
]
_READ_SQL = f"""
SELECT {_FIGURE.sql}, a.balance, p.id, {", ".join(f"p.{name}" for name in PROFILE_FIELDS)},
    EXISTS (SELECT 1 FROM catalog_price x WHERE x.id > f.prices_seen_id AND x.currency = f.currency),
    EXISTS (SELECT 1 FROM metering_meterprice x
            WHERE x.id > f.meter_prices_seen_id AND x.currency = f.currency),
    EXISTS (SELECT 1 FROM metering_usageevent e
            WHERE e.organization_id = f.organization_id AND e.received_at >= f.events_from)
FROM billing_burnfigure f
LEFT JOIN billing_account a ON a.organization_id = f.organization_id
LEFT JOIN billing_billingprofile p ON p.organization_id = f.organization_id
WHERE f.organization_id = %s
"""  # noqa: S608  # nosec B608: the column lists come from the models, values are parameters


def _read(organization: Organization) -> BurnFigure | None:
    """The figure with, in the same query, its account's balance, the billing profile's limits,
    and whether anything it cannot follow happened since its last reconciliation: a price row
    of the currency written (compute or meter), usage events received. Plain SQL: every
    launch, start and volume reads it."""
    found = rows(_READ_SQL, [organization.pk], _READ_FIELDS)
    if not found:
        return None
    row = found[0]
    figure = _FIGURE.instance(row, 0)
    rest = iter(row[len(_FIGURE) :])
    figure.balance, figure.profile_id = next(rest), next(rest)
    for name in PROFILE_FIELDS:
        setattr(figure, f"profile_{name}", next(rest))
    figure.prices_written, figure.meter_prices_written, figure.events_arrived = (
        bool(v) for v in rest
    )
    return figure


_COMMIT_SQL = (
    "UPDATE billing_burnfigure SET committed_per_hour = committed_per_hour + %s,"
    " committed_gb = committed_gb + %s, version = version + 1 WHERE organization_id = %s"
)


def _stale(figure: BurnFigure | None, now: datetime) -> bool:
    max_age = timedelta(seconds=settings.BILLING_BURN_RECONCILE_SECONDS)
    return (
        figure is None
        or figure.balance is None
        or figure.prices_written
        or figure.meter_prices_written
        or (figure.prices_until is not None and figure.prices_until <= now)
        or figure.events_arrived
        or figure.reconciled_at < now - max_age
        or now < figure.as_of  # the clock went back (a test's time travel): start again
    )


def burn_now(organization: Organization, *, now: datetime | None = None) -> BurnNow:
    """The organisation's balance, usage not debited and committed burn, from its figure (one
    query, the billing profile with it), reconciled first when it is missing or when something
    it cannot follow happened since (see the module). The caller holds the organisation's lock
    (the launch, start and volume checks), so it is what every concurrent launch sees."""
    now = now or timezone.now()
    figure = _read(organization)
    if _stale(figure, now):
        burn_reconcile(organization, now=now, locked=True)
        figure = _read(organization)
    profile = None
    if figure.profile_id is not None:
        profile = BillingProfile(
            pk=figure.profile_id,
            organization=organization,
            **{name: getattr(figure, f"profile_{name}") for name in PROFILE_FIELDS},
        )
    undebited = figure.undebited + _billed(figure, figure.as_of, now)
    return BurnNow(
        balance=figure.balance,
        undebited=undebited,
        committed_per_hour=figure.committed_per_hour
        + storage_rate(figure.committed_gb, figure.currency),
        at=now,
        profile=profile,
    )


def burn_reconcile(
    organization: Organization, *, now: datetime | None = None, locked: bool = False
) -> BurnFigure:
    """Recompute the figure in full: usage not debited (the records not rated yet and the hours
    not closed, from the lifecycle) and the rates of what is billed now, at today's prices.

    ``locked``: the caller holds the organisation's lock, so nothing moves meanwhile. Without
    it, the result is kept only if the figure did not change while it was computed."""
    from billing.ledger.services import account_for, undebited_usage

    now = now or timezone.now()
    account_for(organization)  # the balance the figure is read with
    currency = organization.currency
    before = (
        BurnFigure.objects.filter(organization=organization)
        .values_list("version", flat=True)
        .first()
    )
    # The price rows seen, read before the prices themselves: one written in between is newer
    # than the watermark, so the next check reconciles again.
    prices = Price.objects.filter(currency=currency)
    meter_prices = MeterPrice.objects.filter(currency=currency)
    watermarks = {
        "prices_seen_id": prices.aggregate(m=Max("pk"))["m"] or 0,
        "meter_prices_seen_id": meter_prices.aggregate(m=Max("pk"))["m"] or 0,
    }
    upcoming = [
        moment
        for moment in (
            prices.filter(effective_from__gt=now).aggregate(m=Min("effective_from"))["m"],
            meter_prices.filter(effective_from__gt=now).aggregate(m=Min("effective_from"))["m"],
        )
        if moment is not None
    ]
    rater = Rater(currency)
    undebited = _up(undebited_usage(organization, rater=rater, now=now))
    billed = organization_billed_now(organization)

    def per_hour(placements) -> Decimal:
        return sum((rater.per_hour(t, r, gpus, now) for t, r, gpus in placements), Decimal(0))

    values = {
        **watermarks,
        "prices_until": min(upcoming, default=None),
        "events_from": now - EVENTS_MARGIN,
        "currency": currency,
        "undebited": undebited,
        "as_of": now,
        "running_per_hour": per_hour(billed.running),
        "billed_gb": billed.billed_gb,
        "committed_per_hour": per_hour(billed.committed.compute),
        "committed_gb": billed.committed.stored_gb,
        "reconciled_at": now,
    }
    if before is None:
        try:
            with transaction.atomic():
                return BurnFigure.objects.create(organization=organization, **values)
        except IntegrityError:  # made meanwhile by another reconciliation: that one stands
            return BurnFigure.objects.get(organization=organization)
    current = BurnFigure.objects.filter(organization=organization)
    if not locked:
        current = current.filter(version=before)
    current.update(version=F("version") + 1, **values)
    return BurnFigure.objects.get(organization=organization)


def burn_footprint_changed(change: FootprintChange) -> None:
    """Compute's footprint hook: fold what was billed up to the change into ``undebited``, then
    move the rates. Nothing to do for an organisation without a figure (its first check makes
    one). Runs in the change's transaction, under the organisation's lock."""
    if not change.billed_changed and change.hourly_price is not None:
        # only the committed burn moves (a launch): one update, nothing accrues differently
        execute(
            _COMMIT_SQL,
            [change.committed * change.hourly_price, change.committed_gb, change.organization_id],
        )
        return
    figures = BurnFigure.objects.filter(organization_id=change.organization_id)
    figure = figures.select_for_update().first()
    if figure is None:
        return
    price = Decimal(0)
    if change.compute_changed:
        price = change.hourly_price
        if price is None and not change.gpus:  # no-GPU mode: its own price, never the GPUs'
            price = no_gpu_hourly_price(
                region_id=change.region_id, currency=figure.currency, at=change.at
            ) or Decimal(0)
        elif price is None:
            price = hourly_price(
                instance_type_id=change.instance_type_id,
                region_id=change.region_id,
                currency=figure.currency,
                at=change.at,
            ) or Decimal(0)
    if change.at >= figure.as_of:
        figure.undebited += _billed(figure, figure.as_of, change.at)
        figure.as_of = change.at
    elif change.running > 0 or change.billed_gb > 0:
        # billed from its own moment, earlier than the figure's: charge the gap
        gap = BurnFigure(
            currency=figure.currency,
            running_per_hour=price * change.running if change.running > 0 else Decimal(0),
            billed_gb=max(change.billed_gb, 0),
        )
        figure.undebited += _billed(gap, change.at, figure.as_of)
    figure.running_per_hour += price * change.running
    figure.committed_per_hour += price * change.committed
    figure.billed_gb += change.billed_gb
    figure.committed_gb += change.committed_gb
    figure.version += 1
    figure.save(
        update_fields=[
            "undebited",
            "as_of",
            "running_per_hour",
            "committed_per_hour",
            "billed_gb",
            "committed_gb",
            "version",
        ]
    )


def burn_debited(*, organization_id: int, exact: Decimal) -> None:
    """A usage record costing ``exact`` (full precision, positive) was debited: it is no longer
    owed on top of the balance. What comes off is its cost rounded down (the debit itself is
    rounded half-even, so may take up to half a unit more off the balance): the figure keeps
    owing at least the rest."""
    BurnFigure.objects.filter(organization_id=organization_id).update(
        undebited=F("undebited") - exact.quantize(RATING_UNIT, rounding=ROUND_FLOOR),
        version=F("version") + 1,
    )


def burn_debited_together(*, organization_id: int, exacts: list[Decimal]) -> None:
    """Usage records costing ``exacts`` were debited in one batch: ``burn_debited`` for each,
    in one update (each cost rounded down, then summed)."""
    floors = sum((e.quantize(RATING_UNIT, rounding=ROUND_FLOOR) for e in exacts), Decimal(0))
    BurnFigure.objects.filter(organization_id=organization_id).update(
        undebited=F("undebited") - floors, version=F("version") + 1
    )
