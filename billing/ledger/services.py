"""Writes to the credits ledger: posting entries, operator grants, and debiting rated usage.

Locks follow the house order: organisation, then its ledger account. ``ledger_post`` is the one
place an entry is written (``_usage_debit_together`` writes a batch of one organisation's usage
debits the same way): it checks the idempotency key, appends the entry and moves the cached
balance in the same transaction, under the account's row lock.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.ledger.burn import burn_debited, burn_debited_together
from billing.models import Account, EntryKind, LedgerEntry, UsageRating
from portal.accounts.locks import lock_organization
from portal.accounts.models import Organization
from portal.accounts.services import audit_record
from portal.accounts.types import Actor
from portal.errors import Conflict, ErrorCode, InvalidInput, PermissionDenied
from portal.metering.models import UsageRecord
from portal.metering.rating import Rater
from portal.money import RATING_PLACES, at_rating_precision


def account_for(organization: Organization, *, lock: bool = False) -> Account:
    """The organisation's account (created in its currency on first use)."""
    account, _created = Account.objects.get_or_create(
        organization=organization, defaults={"currency": organization.currency}
    )
    if lock:
        account = Account.objects.select_for_update().get(pk=account.pk)
    return account


def _amount(value) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput(
            _("Amount '%(value)s' is not a number.") % {"value": value},
            code=ErrorCode.AMOUNT_INVALID,
        ) from None
    if not amount.is_finite() or amount == 0:
        raise InvalidInput(
            _("The amount must be a finite number other than zero."),
            code=ErrorCode.AMOUNT_INVALID,
        )
    if amount.as_tuple().exponent < -RATING_PLACES:
        raise InvalidInput(
            _("Amounts have at most %(places)s decimal places.") % {"places": RATING_PLACES},
            code=ErrorCode.AMOUNT_INVALID,
        )
    return amount


@transaction.atomic
def ledger_post(
    *,
    organization: Organization,
    kind: str,
    amount,
    idempotency_key: str,
    description: str,
    actor_label: str,
    usage_record: UsageRecord | None = None,
    reference: str = "",
    payment=None,
    invoice=None,
) -> tuple[LedgerEntry, bool]:
    """Append an entry (or return the one already posted with this key). Returns (entry, created).

    The same key with a different kind or amount is refused: an idempotency key names one
    movement of money, forever.
    """
    if kind not in EntryKind.values:
        raise InvalidInput(
            _("Unknown entry kind '%(kind)s'.") % {"kind": kind}, code=ErrorCode.INVALID
        )
    amount = _amount(amount)
    if not idempotency_key:
        raise InvalidInput(
            _("Every ledger entry needs an idempotency key."), code=ErrorCode.INVALID
        )
    lock_organization(organization.pk)
    account = account_for(organization, lock=True)
    existing = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.kind != kind or existing.amount != amount or existing.account_id != account.pk:
            raise Conflict(
                _("This idempotency key was already used for another ledger entry."),
                code=BillingErrorCode.IDEMPOTENCY_KEY_REUSED,
            )
        return existing, False
    try:
        with transaction.atomic():
            entry = LedgerEntry.objects.create(
                account=account,
                kind=kind,
                amount=amount,
                currency=account.currency,
                idempotency_key=idempotency_key,
                description=description[:300],
                actor_label=actor_label[:200],
                usage_record=usage_record,
                reference=reference[:120],
                payment=payment,
                invoice=invoice,
            )
    except IntegrityError:
        raise Conflict(
            _("This movement was already recorded."), code=BillingErrorCode.ALREADY_RECORDED
        ) from None
    account.balance += amount
    account.updated_at = timezone.now()
    account.save(update_fields=["balance", "updated_at"])
    return entry, True


def credit_grant(
    *, actor: Actor, organization: Organization, amount, reason: str, idempotency_key: str
) -> LedgerEntry:
    """Operators give credit (a promotion, a goodwill gesture) with a reason."""
    if not actor.operator:
        raise PermissionDenied(
            _("Only operators grant credit."), code=BillingErrorCode.OPERATORS_ONLY
        )
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the credit is granted."), code=BillingErrorCode.REASON_REQUIRED
        )
    amount = _amount(amount)
    if amount <= 0:
        raise InvalidInput(
            _("A grant adds credit: the amount must be positive."),
            code=ErrorCode.AMOUNT_INVALID,
        )
    with transaction.atomic(durable=True):
        entry, created = ledger_post(
            organization=organization,
            kind=EntryKind.GRANT,
            amount=amount,
            idempotency_key=idempotency_key,
            description=f"Credit granted: {reason}",
            actor_label=actor.label,
        )
        if created:
            audit_record(
                actor=actor,
                action="credit.grant",
                target=entry,
                organization=organization,
                details={"amount": str(amount), "currency": entry.currency, "reason": reason},
            )
    return entry


@dataclass(frozen=True)
class RatingReport:
    debited: int
    amount: Decimal
    skipped_free: int


def usage_debit_pending(*, limit: int = 5000) -> RatingReport:
    """Price closed usage records not rated yet and debit them, once each (the periodic task).

    Each record is priced with the price in force in its hour, at full precision (12 places),
    and gets one ``UsageRating`` (unique per record) and, when it cost something, one ledger
    debit keyed ``usage:<record id>``, in the same transaction: running this twice, or in two
    workers at once, debits nothing twice. An organisation's records of the batch are written
    together (one lock, bulk inserts, one balance update); if another worker rated one of them
    first, that organisation's records are retried one by one.
    """
    pending = (
        UsageRecord.objects.filter(rating__isnull=True)
        .select_related("meter", "organization")
        .order_by("id")[:limit]
    )
    raters: dict[str, Rater] = {}
    by_organization: dict[int, list[tuple[UsageRecord, Decimal]]] = {}
    for record in pending:
        currency = record.organization.currency
        if currency not in raters:  # one price history load per currency and batch
            raters[currency] = Rater(currency)
        by_organization.setdefault(record.organization_id, []).append(
            (record, raters[currency].cost(record))
        )
    debited, total, free = 0, Decimal(0), 0
    for priced in by_organization.values():
        try:
            done = _usage_debit_together(priced)
        except IntegrityError:  # another worker rated some of them first
            done = [pair for pair in priced if _usage_debit_one(*pair)]
        for _record, exact in done:
            cost = at_rating_precision(exact)
            if cost > 0:
                debited += 1
                total += cost
            else:
                free += 1
    return RatingReport(debited=debited, amount=total, skipped_free=free)


def _usage_description(record: UsageRecord) -> str:
    return (
        f"{record.meter.key} {record.subject_type} {record.subject_id}, "
        f"{record.hour_start:%Y-%m-%d %H}:00 UTC"
    )


def _usage_debit_together(
    priced: list[tuple[UsageRecord, Decimal]],
) -> list[tuple[UsageRecord, Decimal]]:
    """Rate and debit one organisation's records (each with its exact cost) in one
    transaction, under its locks; raises IntegrityError (and writes nothing) if any of them
    was rated or debited already."""
    organization = priced[0][0].organization
    costs = [(record, exact, at_rating_precision(exact)) for record, exact in priced]
    with transaction.atomic():
        lock_organization(organization.pk)
        account = account_for(organization, lock=True)
        entries = LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(
                    account=account,
                    kind=EntryKind.USAGE,
                    amount=-cost,
                    currency=account.currency,
                    idempotency_key=f"usage:{record.pk}",
                    description=_usage_description(record)[:300],
                    actor_label="system",
                    usage_record=record,
                )
                for record, _exact, cost in costs
                if cost > 0
            ]
        )
        entry_of = {entry.usage_record_id: entry for entry in entries}
        UsageRating.objects.bulk_create(
            [
                UsageRating(
                    usage_record=record,
                    amount=cost,
                    currency=organization.currency,
                    entry=entry_of.get(record.pk),
                )
                for record, _exact, cost in costs
            ]
        )
        if entries:
            debit = sum((entry.amount for entry in entries), Decimal(0))
            account.balance += debit
            account.updated_at = timezone.now()
            account.save(update_fields=["balance", "updated_at"])
            burn_debited_together(  # no longer owed on top of the balance (the burn figure)
                organization_id=organization.pk,
                exacts=[exact for _record, exact, cost in costs if cost > 0],
            )
    return priced


def _usage_debit_one(record: UsageRecord, exact: Decimal) -> bool:
    """Rate and debit one record at its exact cost; False if another worker rated it first."""
    cost = at_rating_precision(exact)
    try:
        with transaction.atomic():
            entry = None
            if cost > 0:
                entry, posted = ledger_post(
                    organization=record.organization,
                    kind=EntryKind.USAGE,
                    amount=-cost,
                    idempotency_key=f"usage:{record.pk}",
                    description=_usage_description(record),
                    actor_label="system",
                    usage_record=record,
                )
                if posted:  # no longer owed on top of the balance (the burn figure)
                    burn_debited(organization_id=record.organization_id, exact=exact)
            UsageRating.objects.create(
                usage_record=record, amount=cost, currency=record.organization.currency, entry=entry
            )
    except IntegrityError:
        return False
    return True


def undebited_usage(
    organization: Organization, *, rater: Rater, now: datetime | None = None
) -> Decimal:
    """Usage not debited yet, in full: the hours not closed (from the lifecycle and usage
    events), then the closed records not rated yet. In that order, so that an hour closed
    between the two reads is counted twice rather than not at all."""
    from portal.metering.services import usage_open

    open_usage = sum(
        (rater.cost(r) for r in usage_open(organization=organization, now=now)), Decimal(0)
    )
    unrated = UsageRecord.objects.filter(
        organization=organization, rating__isnull=True
    ).select_related("meter")
    return open_usage + sum((rater.cost(r) for r in unrated), Decimal(0))


def balance(organization: Organization, *, rater: Rater | None = None) -> Decimal:
    """The balance to show and to decide on: the ledger, less usage not debited yet (closed
    records awaiting rating and the hours not closed), so it is never behind by more than a
    moment. ``rater``: the caller's price history of the organisation's currency, if any.
    (A launch's check reads the same from the burn figure, ``billing.ledger.burn``.)"""
    account = account_for(organization)
    if rater is None or rater.currency != account.currency:
        rater = Rater(account.currency)
    return account.balance - undebited_usage(organization, rater=rater)
