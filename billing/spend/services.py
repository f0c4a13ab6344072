"""Spend controls: can the organisation pay for a launch (credit reserved for what it holds),
warnings as credit runs low, stopping instances (never terminating them) before a prepaid
balance runs out, monthly spend limits, and overdue invoices.

A monthly spend limit has a mode (``SpendLimitMode``): alert only, block new launches and
starts once reached, or also stop running instances (never terminating them) when the limit
would be reached within the stop threshold. Its notices go out at 50 %, 80 % and 100 %.

Notices are sent once per organisation, kind and period (``SpendAlert`` is unique on them): the
period of a low-balance notice is "since the last credit", so a top-up re-arms it; the period of
a spend-limit or credit-limit notice is the month.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from billing.errors import BillingErrorCode
from billing.ledger.burn import BurnNow, burn_now, storage_rate
from billing.ledger.services import balance as balance_now
from billing.models import AlertKind, BillingProfile, SpendAlert, SpendLimitMode
from billing.spend.credit_terms import credit_limit_needed, exposure
from billing.spend.notices import billing_contacts as billing_contacts  # who hears about money
from billing.spend.notices import spend_notice_send
from portal.accounts.models import BillingMode, Organization
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.catalog.selectors import hourly_price as catalog_hourly_price
from portal.compute.selectors import instances_running
from portal.errors import Conflict, InvalidInput, PortalError
from portal.metering.rating import SECONDS_PER_HOUR, Rater, no_gpu_hourly_price
from portal.metering.selectors import burn_rate, committed_burn
from portal.money import amount_text, money_round_up, parse_amount

log = logging.getLogger(__name__)


class PaymentRequired(Conflict):
    """A launch the organisation cannot pay for (no credit, limit reached, invoice overdue);
    shown on the form like any conflict, 402 in the API."""

    code = BillingErrorCode.PAYMENT_REQUIRED
    status = 402


# --- State ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendState:
    balance: Decimal
    per_hour: Decimal
    hours_left: Decimal | None  # None when nothing is running
    month_to_date: Decimal
    limit: Decimal | None
    overdue: bool
    limit_mode: str = SpendLimitMode.BLOCK

    @property
    def limit_reached(self) -> bool:
        return self.limit is not None and self.month_to_date >= self.limit

    @property
    def limit_blocks(self) -> bool:
        """Reached, in a mode that refuses new launches and starts."""
        return self.limit_reached and self.limit_mode != SpendLimitMode.ALERT


def overdue(organization: Organization, now: datetime | None = None) -> bool:
    """An invoice finalized, unpaid and past its due date (billing.invoicing.services decides)."""
    from billing.invoicing.services import invoice_overdue

    return invoice_overdue(organization, now)


def spend_state(
    organization: Organization, now: datetime | None = None, *, rater: Rater | None = None
) -> SpendState:
    now = now or timezone.now()
    rater = rater or Rater(organization.currency)  # one price history for the whole state
    burn = burn_rate(organization, now=now, rater=rater)
    balance = balance_now(organization, rater=rater)
    hours_left = None
    if burn.per_hour > 0:
        hours_left = max(Decimal(0), balance) / burn.per_hour
    profile = BillingProfile.objects.filter(organization=organization).first()
    return SpendState(
        balance=balance,
        per_hour=burn.per_hour,
        hours_left=hours_left,
        month_to_date=burn.month_to_date,
        limit=profile.monthly_spend_limit if profile else None,
        overdue=overdue(organization, now),
        limit_mode=profile.spend_limit_mode if profile else SpendLimitMode.BLOCK,
    )


# --- Credit reserved for what runs (prepaid) --------------------------------------------------


@dataclass(frozen=True)
class CreditReserve:
    """A prepaid organisation's credit: the balance (usage not debited yet counted), what
    everything it holds costs per hour (``committed_burn``: instances running or on their way,
    kept disks, volumes), the part of the balance reserved for that over
    ``BILLING_CREDIT_RESERVE_HOURS``, and what is left for something new."""

    balance: Decimal
    burn_per_hour: Decimal
    reserved: Decimal
    available: Decimal


def credit_reserve(organization: Organization, *, rater: Rater | None = None) -> CreditReserve:
    rater = rater or Rater(organization.currency)
    balance = balance_now(organization, rater=rater)
    burn = committed_burn(organization, rater=rater)
    reserved = burn * settings.BILLING_CREDIT_RESERVE_HOURS
    return CreditReserve(
        balance=balance, burn_per_hour=burn, reserved=reserved, available=balance - reserved
    )


def _credit_needed(
    organization: Organization,
    *,
    what: str,
    per_hour: Decimal,
    burn: BurnNow,
    profile: BillingProfile | None,
) -> None:
    """Refuse with ``insufficient_credit`` unless the available credit covers ``per_hour`` of
    the new resource for the reserve window; an invoiced organisation needs it within its
    credit limit (``credit_limit_reached``). The balance (usage not debited yet counted) and the
    committed burn come from the burn figure (``billing.ledger.burn``, one query): callers hold
    the organisation's lock (compute's services authorize with ``lock=True``), so concurrent
    launches see each other's figure."""
    if organization.billing_mode != BillingMode.PREPAID:
        credit_limit_needed(organization, what=what, per_hour=per_hour, burn=burn, profile=profile)
        return
    currency = organization.currency
    window = settings.BILLING_CREDIT_RESERVE_HOURS
    needed = per_hour * window
    reserved = burn.committed_per_hour * window
    credit = CreditReserve(
        balance=burn.available_balance,
        burn_per_hour=burn.committed_per_hour,
        reserved=reserved,
        available=burn.available_balance - reserved,
    )
    if credit.available >= needed:
        return
    short = money_round_up(needed - credit.available, currency)
    hours = ngettext("%(hours)s hour", "%(hours)s hours", 1 if window == 1 else 2) % {
        "hours": f"{window.normalize():f}"
    }
    raise PaymentRequired(
        _(
            "Not enough credit for %(what)s: it needs %(needed)s %(currency)s for "
            "%(hours)s, and %(free)s %(currency)s of your %(balance)s "
            "%(currency)s balance is free (the rest covers %(hours)s of what is "
            "running or stored). Top up at least %(short)s %(currency)s on the "
            "billing page."
        )
        % {
            "what": what,
            "needed": amount_text(needed, currency),
            "currency": currency,
            "hours": hours,
            "free": amount_text(max(credit.available, Decimal(0)), currency),
            "balance": amount_text(credit.balance, currency),
            "short": amount_text(short, currency),
        },
        code=BillingErrorCode.INSUFFICIENT_CREDIT,
        details={
            "balance": amount_text(credit.balance, currency),
            "reserved": amount_text(credit.reserved, currency),
            "available": amount_text(credit.available, currency),
            "needed": amount_text(needed, currency),
            "top_up_at_least": amount_text(short, currency),
            "reserve_hours": f"{window.normalize():f}",
            "currency": currency,
            "top_up_url": reverse("billing:billing"),
        },
    )


# --- The launch, start and volume checks (settings.COMPUTE_*_CHECKS) ---------------------------
#
# Each reads, besides what it is asked about: whether an invoice is overdue (one query) and the
# burn figure (one: balance, usage not debited, committed burn, and the billing profile's spend
# and credit limits); an invoiced organisation's check adds its unpaid invoices (one). A spend
# limit in block or stop mode adds this month's spend (``burn_rate``), a start the instance's
# price (one), a launch nothing more (it passes the price it read).


def _refuse_overdue(organization: Organization, what: str) -> None:
    if overdue(organization):
        raise PaymentRequired(
            _("An invoice is overdue. Pay it to %(what)s.") % {"what": what},
            code=BillingErrorCode.INVOICE_OVERDUE,
        )


def _refuse_over_limit(
    organization: Organization,
    *,
    what: str,
    profile: BillingProfile | None,
    burn: BurnNow,
    per_hour: Decimal = Decimal(0),
) -> None:
    """A monthly spend limit in block or stop mode, once reached, refuses new launches and
    starts (in alert mode it only tells). In stop mode it refuses them as soon as the watch
    would stop them: when, with ``per_hour`` more, the limit would be reached within the stop
    threshold."""
    currency = organization.currency
    limit = profile.monthly_spend_limit if profile else None
    if limit is None or profile.spend_limit_mode == SpendLimitMode.ALERT:
        return
    spent = burn_rate(organization, rater=Rater(currency)).month_to_date
    reach = spent
    if profile.spend_limit_mode == SpendLimitMode.STOP:
        committed = burn.committed_per_hour + per_hour
        reach += committed * Decimal(settings.BILLING_STOP_THRESHOLD_SECONDS) / SECONDS_PER_HOUR
    if reach >= limit:
        raise PaymentRequired(
            _(
                "This month's spend limit of %(limit)s %(currency)s is reached. Raise "
                "it on the billing page to %(what)s."
            )
            % {"limit": amount_text(limit, currency), "currency": currency, "what": what},
            code=BillingErrorCode.SPEND_LIMIT_REACHED,
            details={
                "limit": amount_text(limit, currency),
                "month_to_date": amount_text(spent, currency),
                "mode": profile.spend_limit_mode,
            },
        )


def _price_now(organization: Organization, instance_type_id: int, region_id: int) -> Decimal:
    return catalog_hourly_price(
        instance_type_id=instance_type_id, region_id=region_id, currency=organization.currency
    ) or Decimal(0)


def launch_check(
    *,
    organization: Organization,
    instance_type,
    region,
    actor=None,
    new_volume_gb=0,
    hourly_price: Decimal | None = None,
    **_kwargs,
) -> None:
    """Refuse a launch the organisation cannot pay for.

    - an overdue invoice blocks every launch;
    - a monthly spend limit, once reached, blocks new launches (unless it only alerts);
    - a prepaid organisation needs credit for the new instance over the reserve window on top
      of the credit reserved for everything it already holds (``credit_reserve``, here read
      from the burn figure), and for a volume made with the launch its storage too; an
      invoiced one needs it within its credit limit (``credit_terms.exposure``).

    ``hourly_price``: the type's on-demand price in the region now, when the launch read it
    already (else one query).
    """
    _refuse_overdue(organization, _("launch new instances"))
    hourly = hourly_price
    if hourly is None:
        hourly = _price_now(organization, instance_type.pk, region.pk)
    what = instance_type.name
    if new_volume_gb:  # a volume made with the launch is stored from the start
        hourly += storage_rate(new_volume_gb, organization.currency)
        what = _("%(type)s with a %(size)s GB volume") % {
            "type": instance_type.name,
            "size": new_volume_gb,
        }
    burn = burn_now(organization)
    profile = burn.profile
    _refuse_over_limit(
        organization, what=_("launch more"), profile=profile, burn=burn, per_hour=hourly
    )
    _credit_needed(organization, what=what, per_hour=hourly, burn=burn, profile=profile)


def start_check(
    *,
    organization: Organization,
    instance=None,
    gpus: bool = True,
    hourly_price: Decimal | None = None,
    **_kwargs,
) -> None:
    """Starting a stopped instance needs nothing overdue and, prepaid, credit for its running
    price over the reserve window beyond what is reserved already (its kept disk among it).

    Without GPUs (``gpus=False``) its running price is the region's no-GPU price
    (``hourly_price``, read by the start), never the type's: an organisation that can pay for
    a no-GPU hour but not a GPU hour can still start it without GPUs."""
    _refuse_overdue(organization, _("start instances"))
    hourly = Decimal(0)
    if not gpus:
        hourly = hourly_price
        if hourly is None and instance is not None:
            hourly = no_gpu_hourly_price(
                region_id=instance.region_id, currency=organization.currency
            )
        hourly = hourly or Decimal(0)
    elif instance is not None:
        hourly = _price_now(organization, instance.instance_type_id, instance.region_id)
    burn = burn_now(organization)
    profile = burn.profile
    _refuse_over_limit(
        organization, what=_("start instances"), profile=profile, burn=burn, per_hour=hourly
    )
    what = (
        _("starting %(name)s") % {"name": instance.name}
        if instance is not None
        else _("starting an instance")
    )
    _credit_needed(organization, what=what, per_hour=hourly, burn=burn, profile=profile)


def volume_check(*, organization: Organization, size_gb: int, **_kwargs) -> None:
    """A new volume needs, prepaid, credit for its storage over the reserve window."""
    burn = burn_now(organization)
    _credit_needed(
        organization,
        what=_("a %(size)s GB volume") % {"size": size_gb},
        per_hour=storage_rate(size_gb, organization.currency),
        burn=burn,
        profile=burn.profile,
    )


# --- Settings a customer changes ----------------------------------------------------------------


SPEND_LIMIT_ALERTS = (  # (share of the limit, notice kind), highest first
    (Decimal(1), AlertKind.SPEND_LIMIT),
    (Decimal("0.8"), AlertKind.SPEND_LIMIT_80),
    (Decimal("0.5"), AlertKind.SPEND_LIMIT_50),
)


@transaction.atomic(durable=True)
def spend_limit_set(*, actor: Actor, limit, mode: str | None = None) -> BillingProfile:
    """Set (or clear, with an empty value) the monthly spend limit and what reaching it does
    (``mode``: alert, block or stop; unchanged when not given)."""
    from billing.payments.services import profile_for

    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    organization = actor.organization
    value = None
    if limit not in (None, ""):
        value = parse_amount(limit, organization.currency, field="limit")
    if mode not in (None, "") and mode not in SpendLimitMode.values:
        message = _("Mode is one of %(modes)s.") % {"modes": ", ".join(SpendLimitMode.values)}
        raise InvalidInput(
            message, code=BillingErrorCode.SPEND_LIMIT_MODE_INVALID, details={"mode": message}
        )
    profile = profile_for(organization, lock=True)
    profile.monthly_spend_limit = value
    if mode:
        profile.spend_limit_mode = mode
    profile.updated_at = timezone.now()
    profile.save(update_fields=["monthly_spend_limit", "spend_limit_mode", "updated_at"])
    # A new limit is a new start: it may be reached (and announced) again this month.
    SpendAlert.objects.filter(
        organization=organization, kind__in=[kind for _share, kind in SPEND_LIMIT_ALERTS]
    ).delete()
    audit_record(
        actor=actor,
        action="billing.spend_limit",
        target=profile,
        details={"limit": None if value is None else str(value), "mode": profile.spend_limit_mode},
    )
    return profile


def credit_arrived(organization: Organization) -> None:
    """A top-up or payment landed: the grace clock stops once the balance is positive again."""
    if balance_now(organization) > 0:
        BillingProfile.objects.filter(
            organization=organization, balance_exhausted_at__isnull=False
        ).update(balance_exhausted_at=None, updated_at=timezone.now())


# --- The periodic watch -------------------------------------------------------------------------


def _alert_once(organization: Organization, kind: str, period: str) -> bool:
    try:
        with transaction.atomic():
            SpendAlert.objects.create(organization=organization, kind=kind, period=period)
    except IntegrityError:
        return False
    return True


def _notify(organization: Organization, kind: str, body: Callable[[], str]) -> None:
    """``body`` makes the text in the active language: each contact reads it in theirs."""
    spend_notice_send(organization=organization, kind=kind, body=body)


def watch_organization(organization: Organization, now: datetime | None = None) -> list[str]:
    """Check one organisation: warn, auto-recharge, stop instances before the credit runs out.
    Returns what it did (for the task's result)."""
    from billing.payments.services import auto_recharge_maybe, last_credit_id

    now = now or timezone.now()
    done: list[str] = []
    currency = organization.currency
    rater = Rater(currency)  # one price history for the whole watch
    state = spend_state(organization, now, rater=rater)
    month = f"{now:%Y-%m}"
    if state.limit is not None:
        done += _watch_spend_limit(organization, state, month, now, rater=rater)
    if organization.billing_mode != BillingMode.PREPAID:
        return done + _watch_credit_limit(organization, month, now, rater=rater)
    recharge = auto_recharge_maybe(organization, state.balance)
    period = str(last_credit_id(organization))
    if recharge is not None and recharge.status == "succeeded":
        done.append("auto-recharged")
        state = spend_state(organization, now, rater=rater)
    elif recharge is not None and _alert_once(
        organization, AlertKind.AUTO_RECHARGE_FAILED, recharge.idempotency_key[-40:]
    ):
        _notify(
            organization,
            AlertKind.AUTO_RECHARGE_FAILED,
            lambda: (
                _(
                    "Auto-recharge could not charge your card %(amount)s %(currency)s: %(reason)s "
                    "Top up on the billing page or save another card."
                )
                % {
                    "amount": recharge.amount,
                    "currency": currency,
                    "reason": recharge.failure_message or _("the payment did not go through."),
                }
            ),
        )
        done.append("auto-recharge failed")
    burn = committed_burn(organization, now, rater=rater)
    horizon = burn * Decimal(settings.BILLING_STOP_THRESHOLD_SECONDS) / SECONDS_PER_HOUR
    if state.balance <= horizon and instances_running(organization, coming=True).exists():
        # The balance reaches zero within the threshold: stop now, before it does (see
        # README "Credit and debt": with the watch every minute, compute runs into no debt).
        from billing.payments.services import profile_for

        profile = profile_for(organization)
        if profile.balance_exhausted_at is None:
            BillingProfile.objects.filter(pk=profile.pk).update(balance_exhausted_at=now)
        stopped = instances_stop_for_credit(organization)
        if stopped and _alert_once(organization, AlertKind.INSTANCES_STOPPED, period):
            _notify(
                organization,
                AlertKind.INSTANCES_STOPPED,
                lambda: (
                    _(
                        "%(stopped)s running instance(s) were stopped: your balance of %(balance)s "
                        "%(currency)s would have run out within %(minutes)s minutes at %(burn)s "
                        "%(currency)s per hour. Their disks and volumes are kept. Top up, then start "
                        "them again."
                    )
                    % {
                        "stopped": stopped,
                        "balance": amount_text(state.balance, currency),
                        "currency": currency,
                        "minutes": settings.BILLING_STOP_THRESHOLD_SECONDS // 60,
                        "burn": amount_text(burn, currency),
                    }
                ),
            )
        if stopped:
            done.append(f"{stopped} instance(s) stopped")
        return done
    if state.balance > 0:
        BillingProfile.objects.filter(
            organization=organization, balance_exhausted_at__isnull=False
        ).update(balance_exhausted_at=None)
        for hours, kind in zip(
            settings.BILLING_LOW_BALANCE_HOURS,
            (AlertKind.LOW_BALANCE_24H, AlertKind.LOW_BALANCE_1H),
            strict=True,
        ):
            low = state.hours_left is not None and state.hours_left < hours
            if low and _alert_once(organization, kind, period):
                _notify(
                    organization,
                    kind,
                    lambda: (
                        _(
                            "Your balance is %(balance)s %(currency)s: about %(hours)s hours at the "
                            "current %(per_hour)s %(currency)s per hour. Top up to keep your "
                            "instances running."
                        )
                        % {
                            "balance": amount_text(state.balance, currency),
                            "currency": currency,
                            "hours": f"{state.hours_left:.1f}",
                            "per_hour": amount_text(state.per_hour, currency),
                        }
                    ),
                )
                done.append(kind)
    return done


def _limit_text(state: SpendState, currency: str) -> str:
    return _("%(spent)s %(currency)s of this month's spend limit of %(limit)s %(currency)s") % {
        "spent": amount_text(state.month_to_date, currency),
        "currency": currency,
        "limit": amount_text(state.limit, currency),
    }


def _watch_spend_limit(
    organization: Organization, state: SpendState, month: str, now: datetime, *, rater: Rater
) -> list[str]:
    """Notices at 50, 80 and 100 % of the monthly limit, each once a month; in stop mode, the
    running instances stopped when the limit would be reached within the stop threshold."""
    done: list[str] = []
    currency = organization.currency
    mode = state.limit_mode
    share = state.month_to_date / state.limit
    for threshold, kind in SPEND_LIMIT_ALERTS:
        if share < threshold:
            continue
        if _alert_once(organization, kind, month):
            _notify(
                organization,
                kind,
                lambda kind=kind, threshold=threshold: _spend_limit_notice(
                    state, currency, mode, kind, threshold
                ),
            )
            done.append(f"spend limit {threshold * 100:.0f} %")
        break  # one notice per watch: the highest share passed
    if mode == SpendLimitMode.STOP:
        burn = committed_burn(organization, now, rater=rater)
        horizon = burn * Decimal(settings.BILLING_STOP_THRESHOLD_SECONDS) / SECONDS_PER_HOUR
        if (
            state.month_to_date + horizon >= state.limit
            and instances_running(organization, coming=True).exists()
        ):
            stopped = instances_stop_for_credit(organization)
            if stopped:
                if _alert_once(organization, AlertKind.SPEND_LIMIT, month):
                    _notify(
                        organization,
                        AlertKind.SPEND_LIMIT,
                        lambda: (
                            _(
                                "%(stopped)s running instance(s) were stopped: %(spent)s is spent "
                                "and the limit would be reached within %(minutes)s minutes. Their "
                                "disks and volumes are kept. Raise the limit, then start them again."
                            )
                            % {
                                "stopped": stopped,
                                "spent": _limit_text(state, currency),
                                "minutes": settings.BILLING_STOP_THRESHOLD_SECONDS // 60,
                            }
                        ),
                    )
                done.append(f"{stopped} instance(s) stopped for the spend limit")
    return done


CREDIT_LIMIT_ALERTS = (
    (Decimal(1), AlertKind.CREDIT_LIMIT),
    (Decimal("0.8"), AlertKind.CREDIT_LIMIT_80),
)


def _watch_credit_limit(
    organization: Organization, month: str, now: datetime, *, rater: Rater
) -> list[str]:
    """An invoiced organisation hears once a month at 80 % and at 100 % of its credit limit."""
    current = exposure(organization, now, rater=rater)
    share = current.used_share
    if share is None:
        return []
    currency = organization.currency
    for threshold, kind in CREDIT_LIMIT_ALERTS:
        if share < threshold:
            continue
        if not _alert_once(organization, kind, month):
            return []
        _notify(
            organization,
            kind,
            lambda kind=kind, threshold=threshold: _credit_limit_notice(
                current, currency, kind, threshold
            ),
        )
        return [f"credit limit {threshold * 100:.0f} %"]
    return []


def _spend_limit_notice(state, currency: str, mode: str, kind: str, threshold) -> str:
    """The spend limit notice, in the active language."""
    if kind != AlertKind.SPEND_LIMIT:
        return _("This month's spend passed %(share)s %% of its limit: %(spent)s. ") % {
            "share": f"{threshold * 100:.0f}",
            "spent": _limit_text(state, currency),
        }
    consequence = {
        SpendLimitMode.ALERT: _("Nothing is blocked: the limit only alerts."),
        SpendLimitMode.BLOCK: _(
            "New launches and starts are blocked until the limit is raised or the month ends; "
            "running instances keep running."
        ),
        SpendLimitMode.STOP: _(
            "Running instances are stopped (their disks and volumes are kept), and new launches "
            "and starts are blocked until the limit is raised or the month ends."
        ),
    }[mode]
    body = _("This month's spend reached its limit: %(spent)s. ") % {
        "spent": _limit_text(state, currency)
    }
    return body + consequence


def _credit_limit_notice(current, currency: str, kind: str, threshold) -> str:
    """The credit limit notice, in the active language."""
    values = {
        "share": f"{threshold * 100:.0f}",
        "total": amount_text(current.total, currency),
        "limit": amount_text(current.limit, currency),
        "currency": currency,
        "unpaid": amount_text(current.unpaid_invoices, currency),
        "usage": amount_text(current.usage_not_invoiced, currency),
        "hours": f"{settings.BILLING_CREDIT_RESERVE_HOURS.normalize():f}",
        "reserved": amount_text(current.reserved, currency),
    }
    if kind == AlertKind.CREDIT_LIMIT:
        return (
            _(
                "Your organisation has reached its credit limit: %(total)s %(currency)s of "
                "%(limit)s %(currency)s is owed or reserved (unpaid invoices %(unpaid)s, usage not "
                "invoiced yet %(usage)s, the next %(hours)s hour(s) of what runs %(reserved)s). New "
                "launches that go beyond it are refused. Pay an invoice or ask finance for a higher "
                "limit."
            )
            % values
        )
    return (
        _(
            "Your organisation has passed %(share)s %% of its credit limit: %(total)s %(currency)s "
            "of %(limit)s %(currency)s is owed or reserved (unpaid invoices %(unpaid)s, usage not "
            "invoiced yet %(usage)s, the next %(hours)s hour(s) of what runs %(reserved)s). "
            "Launches beyond the limit will be refused."
        )
        % values
    )


def instances_stop_for_credit(organization: Organization) -> int:
    """Stop (never terminate) every running instance of the organisation. Returns how many."""
    from portal.compute.services import instance_action

    actor = Actor.system(organization)
    stopped = 0
    for instance_id in instances_running(organization).values_list("pk", flat=True):
        try:
            instance_action(actor=actor, instance_id=instance_id, action="stop")
            stopped += 1
        except PortalError as exc:  # e.g. it moved on meanwhile; the next watch sees it again
            log.info("could not stop instance %s for credit: %s", instance_id, exc.message)
    return stopped


def spend_watch(now: datetime | None = None) -> dict[str, list[str]]:
    """The periodic task: every organisation that is running something, has a spend limit or
    auto-recharge, or whose grace clock is running."""
    now = now or timezone.now()
    busy = instances_running().values("organization_id")
    watched = BillingProfile.objects.filter(
        Q(monthly_spend_limit__isnull=False)
        | Q(credit_limit__isnull=False)
        | Q(auto_recharge_enabled=True)
        | Q(balance_exhausted_at__isnull=False)
    ).values("organization_id")
    organizations = Organization.objects.filter(
        Q(pk__in=busy) | Q(pk__in=watched), deleted_at__isnull=True
    )
    report = {}
    for organization in organizations:
        try:
            done = watch_organization(organization, now)
        except Exception:  # one organisation must not stop the watch for the others
            log.exception("spend watch failed for organisation %s", organization.pk)
            continue
        if done:
            report[organization.slug] = done
    return report


# --- What pages show -------------------------------------------------------------------------


@dataclass(frozen=True)
class Banner:
    level: str  # "warn" or "error"
    message: str


def banner(organization: Organization) -> Banner | None:
    """The notice shown on every page, from the alerts already sent (one cheap query)."""
    from billing.payments.services import last_credit_id

    if organization is None:
        return None
    now = timezone.now()
    latest = {
        alert.kind: alert
        for alert in SpendAlert.objects.filter(
            organization=organization,
            kind__in=[
                AlertKind.LOW_BALANCE_24H,
                AlertKind.LOW_BALANCE_1H,
                AlertKind.BALANCE_EXHAUSTED,
                AlertKind.INSTANCES_STOPPED,
                AlertKind.SPEND_LIMIT_50,
                AlertKind.SPEND_LIMIT_80,
                AlertKind.SPEND_LIMIT,
                AlertKind.CREDIT_LIMIT_80,
                AlertKind.CREDIT_LIMIT,
            ],
        ).order_by("created_at")
    }
    if not latest:
        return None
    period = str(last_credit_id(organization))
    current = {k: a for k, a in latest.items() if a.period in (period, f"{now:%Y-%m}")}
    if AlertKind.INSTANCES_STOPPED in current:
        return Banner(
            "error",
            _(
                "Instances were stopped: your credit was about to run out. Top up, then start them "
                "again."
            ),
        )
    low = {AlertKind.LOW_BALANCE_1H, AlertKind.LOW_BALANCE_24H} & set(current)
    if low and not instances_running(organization, coming=True).exists():
        return None  # nothing burns credit now: no countdown to show
    if AlertKind.LOW_BALANCE_1H in current:
        return Banner(
            "error", _("Less than one hour of credit left. Top up to keep instances running.")
        )
    if AlertKind.LOW_BALANCE_24H in current:
        return Banner("warn", _("Less than a day of credit left at the current burn rate."))
    if AlertKind.CREDIT_LIMIT in current:
        return Banner(
            "error",
            _(
                "The credit limit is reached: launches beyond it are refused. Pay an invoice or ask "
                "finance for a higher limit."
            ),
        )
    if AlertKind.SPEND_LIMIT in current:
        mode = (
            BillingProfile.objects.filter(organization=organization)
            .values_list("spend_limit_mode", flat=True)
            .first()
        )
        return Banner("warn", str(SPEND_LIMIT_BANNERS.get(mode, SPEND_LIMIT_BANNERS["block"])))
    if AlertKind.CREDIT_LIMIT_80 in current:
        return Banner("warn", _("More than 80 % of the credit limit is used."))
    if AlertKind.SPEND_LIMIT_80 in current:
        return Banner("warn", _("This month's spend has passed 80 % of its limit."))
    if AlertKind.SPEND_LIMIT_50 in current:
        return Banner("warn", _("This month's spend has passed half of its limit."))
    return None


SPEND_LIMIT_BANNERS = {
    SpendLimitMode.ALERT: gettext_lazy(
        "This month's spend limit is reached (it only alerts: nothing is blocked)."
    ),
    SpendLimitMode.BLOCK: gettext_lazy(
        "This month's spend limit is reached: new launches and starts are blocked."
    ),
    SpendLimitMode.STOP: gettext_lazy(
        "This month's spend limit is reached: running instances were stopped "
        "and new launches and starts are blocked."
    ),
}
