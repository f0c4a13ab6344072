"""Credit terms: monthly invoicing, which only finance grants.

A customer cannot switch itself to monthly invoicing; an owner or billing member requests it
(``credit_request_create``: company details and the spend expected per month). Finance staff
grant it in admin with a credit limit and payment terms (``credit_terms_grant``), change them
(``credit_terms_change``) or revoke them (``credit_terms_revoke``, back to prepaid credit); each
of these, and a decline, is an audit event of the organisation.

An invoiced organisation's exposure is what it owes and is about to owe: its unpaid invoices,
its usage not invoiced yet (this month's, and the last month's until it is invoiced), less any
credit it holds, plus what everything it runs or stores costs over the reserve window
(``BILLING_CREDIT_RESERVE_HOURS``). It is minus the live balance plus that reserve. A launch,
start or volume that would take the exposure above the credit limit is refused with
``credit_limit_reached``; an invoiced organisation without a limit has no credit to use.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.ledger.burn import BurnNow
from billing.ledger.services import balance as balance_now
from billing.models import (
    AlertKind,
    BillingProfile,
    CreditRequest,
    CreditRequestStatus,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    SpendAlert,
)
from portal.accounts.models import BillingMode, Organization
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from portal.metering.rating import Rater
from portal.metering.selectors import committed_burn
from portal.money import amount_text, parse_amount

MAX_PAYMENT_TERMS_DAYS = 120


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, details={field: message})


# --- Exposure ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """What an invoiced organisation owes or is about to owe, against its credit limit."""

    unpaid_invoices: Decimal  # finalized invoices not paid yet
    usage_not_invoiced: Decimal  # what the balance owes beyond them (net of credit held, >= 0)
    credit_held: Decimal  # credit on the account beyond what usage took (>= 0)
    reserved: Decimal  # committed burn over the reserve window
    limit: Decimal | None

    @property
    def total(self) -> Decimal:
        owed = self.unpaid_invoices + self.usage_not_invoiced - self.credit_held
        return max(Decimal(0), owed) + self.reserved

    @property
    def available(self) -> Decimal:
        return (self.limit or Decimal(0)) - self.total

    @property
    def used_share(self) -> Decimal | None:
        """The share of the limit used, 0.8 for 80 % (None without a positive limit)."""
        if not self.limit:
            return None
        return self.total / self.limit


def unpaid_invoices(organization: Organization) -> Decimal:
    return Invoice.objects.filter(
        organization=organization, kind=InvoiceKind.INVOICE, status=InvoiceStatus.FINALIZED
    ).aggregate(due=Sum("amount_due"))["due"] or Decimal(0)


def exposure(
    organization: Organization,
    now: datetime | None = None,
    *,
    rater: Rater | None = None,
    profile: BillingProfile | None = None,
) -> Exposure:
    rater = rater or Rater(organization.currency)
    if profile is None:
        profile = BillingProfile.objects.filter(organization=organization).first()
    owed = -balance_now(organization, rater=rater)
    unpaid = unpaid_invoices(organization)
    burn = committed_burn(organization, now, rater=rater)
    return Exposure(
        unpaid_invoices=unpaid,
        usage_not_invoiced=max(Decimal(0), owed - unpaid),
        credit_held=max(Decimal(0), unpaid - owed),
        reserved=burn * settings.BILLING_CREDIT_RESERVE_HOURS,
        limit=profile.credit_limit if profile else None,
    )


def exposure_from_burn(
    organization: Organization, burn: BurnNow, profile: BillingProfile | None
) -> Exposure:
    """``exposure`` from the organisation's burn figure (``billing.ledger.burn``) instead of
    the full recomputation: one query (the unpaid invoices) beside the figure's."""
    owed = -burn.available_balance
    unpaid = unpaid_invoices(organization)
    return Exposure(
        unpaid_invoices=unpaid,
        usage_not_invoiced=max(Decimal(0), owed - unpaid),
        credit_held=max(Decimal(0), unpaid - owed),
        reserved=burn.committed_per_hour * settings.BILLING_CREDIT_RESERVE_HOURS,
        limit=profile.credit_limit if profile else None,
    )


def credit_limit_needed(
    organization: Organization,
    *,
    what: str,
    per_hour: Decimal,
    rater: Rater | None = None,
    burn: BurnNow | None = None,
    profile: BillingProfile | None = None,
) -> None:
    """Refuse with ``credit_limit_reached`` unless the credit limit covers the exposure with
    ``per_hour`` of the new resource over the reserve window. Callers hold the organisation's
    lock, so concurrent launches see each other. With ``burn`` (and the ``profile`` read
    already), the exposure comes from the burn figure."""
    currency = organization.currency
    window = settings.BILLING_CREDIT_RESERVE_HOURS
    needed = per_hour * window
    if burn is not None:
        current = exposure_from_burn(organization, burn, profile)
    else:
        current = exposure(organization, rater=rater)
    if current.limit is not None and current.total + needed <= current.limit:
        return
    details = {
        "credit_limit": None if current.limit is None else amount_text(current.limit, currency),
        "exposure": amount_text(current.total, currency),
        "unpaid_invoices": amount_text(current.unpaid_invoices, currency),
        "usage_not_invoiced": amount_text(current.usage_not_invoiced, currency),
        "credit_held": amount_text(current.credit_held, currency),
        "reserved": amount_text(current.reserved, currency),
        "needed": amount_text(needed, currency),
        "currency": currency,
        "billing_url": reverse("billing:billing"),
    }
    if current.limit is None:
        message = _(
            "No credit limit is granted for monthly invoicing, so %(what)s cannot start. "
            "Ask finance for a credit limit."
        ) % {"what": what}
    else:
        message = _(
            "The credit limit of %(limit)s %(currency)s does not cover %(what)s: %(total)s "
            "%(currency)s is owed or reserved and it needs %(needed)s %(currency)s more. Pay an "
            "invoice or ask finance for a higher limit."
        ) % {
            "limit": amount_text(current.limit, currency),
            "currency": currency,
            "what": what,
            "total": amount_text(current.total, currency),
            "needed": amount_text(needed, currency),
        }
    from billing.spend.services import PaymentRequired

    raise PaymentRequired(message, code=BillingErrorCode.CREDIT_LIMIT_REACHED, details=details)


# --- The customer's request ---------------------------------------------------------------------


REQUEST_FIELDS = (
    "company_name",
    "registration_number",
    "address",
    "contact_name",
    "contact_email",
    "contact_phone",
    "expected_monthly_spend",
    "note",
)


def _text(values: dict, key: str, limit: int, *, required: bool = True) -> str:
    value = values.get(key)
    value = "" if value is None else str(value).strip()
    if required and not value:
        raise _invalid(
            key, _("%(field)s is required.") % {"field": key.replace("_", " ").capitalize()}
        )
    if len(value) > limit:
        raise _invalid(key, _("At most %(limit)s characters.") % {"limit": limit})
    return value


@transaction.atomic(durable=True)
def credit_request_create(*, actor: Actor, **values) -> CreditRequest:
    """An owner or billing member asks for monthly invoicing."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    organization = actor.organization
    if organization.billing_mode == BillingMode.INVOICED:
        raise Conflict(
            _("This organisation is invoiced monthly already."),
            code=BillingErrorCode.CREDIT_TERMS_ACTIVE,
        )
    if CreditRequest.objects.filter(
        organization=organization, status=CreditRequestStatus.PENDING
    ).exists():
        raise Conflict(
            _("A request for monthly invoicing is already waiting for finance."),
            code=BillingErrorCode.CREDIT_REQUEST_PENDING,
        )
    unknown = set(values) - set(REQUEST_FIELDS)
    if unknown:
        first = sorted(unknown)[0]
        raise _invalid(first, _("Unknown field: %(field)s.") % {"field": first})
    email = _text(values, "contact_email", 254)
    try:
        validate_email(email)
    except ValidationError as exc:
        raise _invalid("contact_email", _("Enter a valid email address.")) from exc
    spend = parse_amount(
        values.get("expected_monthly_spend"), organization.currency, field="expected_monthly_spend"
    )
    request = CreditRequest.objects.create(
        organization=organization,
        requested_by=actor.user,
        company_name=_text(values, "company_name", 200),
        registration_number=_text(values, "registration_number", 64),
        address=_text(values, "address", 500),
        contact_name=_text(values, "contact_name", 120),
        contact_email=email,
        contact_phone=_text(values, "contact_phone", 40, required=False),
        expected_monthly_spend=spend,
        currency=organization.currency,
        note=_text(values, "note", 1000, required=False),
    )
    audit_record(
        actor=actor,
        action="billing.credit_request",
        target=request,
        details={"expected_monthly_spend": str(spend), "currency": organization.currency},
    )
    return request


@transaction.atomic(durable=True)
def credit_request_withdraw(*, actor: Actor, request_id: int) -> CreditRequest:
    actor = authorize(actor, Action.BILLING_MANAGE, lock=True)
    request = CreditRequest.objects.filter(
        organization=actor.organization, pk=request_id, status=CreditRequestStatus.PENDING
    ).first()
    if request is None:
        raise NotFound(_("No pending request for monthly invoicing."))
    request.status = CreditRequestStatus.WITHDRAWN
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    audit_record(actor=actor, action="billing.credit_request_withdraw", target=request)
    return request


def credit_request_pending(organization: Organization) -> CreditRequest | None:
    return CreditRequest.objects.filter(
        organization=organization, status=CreditRequestStatus.PENDING
    ).first()


# --- Finance's decisions --------------------------------------------------------------------------


def _finance(actor: Actor) -> Actor:
    """Only finance staff (``billing.grant_credit``) decide credit terms."""
    user = actor.user
    if not (actor.operator and user is not None and user.is_staff):
        raise PermissionDenied(_("Only finance staff decide credit terms."))
    if not user.has_perm("billing.grant_credit"):
        raise PermissionDenied(_("Only finance staff decide credit terms."))
    return actor


def _terms(organization: Organization, credit_limit, payment_terms_days) -> tuple[Decimal, int]:
    limit = parse_amount(credit_limit, organization.currency, field="credit_limit")
    try:
        days = int(payment_terms_days)
    except (TypeError, ValueError):
        raise _invalid("payment_terms_days", _("Payment terms are a number of days.")) from None
    if not 0 <= days <= MAX_PAYMENT_TERMS_DAYS:
        raise _invalid(
            "payment_terms_days",
            _("Payment terms are 0 to %(max)s days.") % {"max": MAX_PAYMENT_TERMS_DAYS},
        )
    return limit, days


def _pending_request(request_id: int) -> CreditRequest:
    """The request finance decides on, locked; refused once decided."""
    request = CreditRequest.objects.select_for_update().filter(pk=request_id).first()
    if request is None:
        raise NotFound(_("No such request."))
    if request.status != CreditRequestStatus.PENDING:
        raise Conflict(
            _("This request is %(status)s already.")
            % {"status": request.get_status_display().lower()},
            code=BillingErrorCode.CREDIT_REQUEST_DECIDED,
        )
    return request


def _locked_organization(organization_id: int) -> Organization:
    return Organization.objects.select_for_update().get(pk=organization_id)


def _rearm_notices(organization: Organization) -> None:
    SpendAlert.objects.filter(
        organization=organization, kind__in=[AlertKind.CREDIT_LIMIT_80, AlertKind.CREDIT_LIMIT]
    ).delete()


@transaction.atomic(durable=True)
def credit_terms_grant(
    *, actor: Actor, request_id: int, credit_limit, payment_terms_days, note: str = ""
) -> BillingProfile:
    """Grant a pending request: the organisation is invoiced monthly from now on, up to the
    credit limit, with the payment terms given."""
    from billing.payments.services import profile_for

    _finance(actor)
    request = _pending_request(request_id)
    organization = _locked_organization(request.organization_id)
    limit, days = _terms(organization, credit_limit, payment_terms_days)
    profile = profile_for(organization, lock=True)
    before = organization.billing_mode
    organization.billing_mode = BillingMode.INVOICED
    organization.save(update_fields=["billing_mode"])
    profile.credit_limit, profile.payment_terms_days = limit, days
    profile.updated_at = timezone.now()
    profile.save(update_fields=["credit_limit", "payment_terms_days", "updated_at"])
    request.status = CreditRequestStatus.GRANTED
    request.decided_at, request.decided_by = timezone.now(), actor.user
    request.granted_limit, request.granted_terms_days = limit, days
    request.decision_note = (note or "").strip()[:500]
    request.save()
    _rearm_notices(organization)
    audit_record(
        actor=actor,
        action="billing.credit_terms_grant",
        target=profile,
        organization=organization,
        details={
            "request": request.pk,
            "billing_mode": [before, BillingMode.INVOICED],
            "credit_limit": str(limit),
            "payment_terms_days": days,
            "currency": organization.currency,
        },
    )
    return profile


@transaction.atomic(durable=True)
def credit_request_decline(*, actor: Actor, request_id: int, note: str = "") -> CreditRequest:
    _finance(actor)
    request = _pending_request(request_id)
    request.status = CreditRequestStatus.DECLINED
    request.decided_at, request.decided_by = timezone.now(), actor.user
    request.decision_note = (note or "").strip()[:500]
    request.save(update_fields=["status", "decided_at", "decided_by", "decision_note"])
    audit_record(
        actor=actor,
        action="billing.credit_request_decline",
        target=request,
        organization=request.organization,
        details={"note": request.decision_note},
    )
    return request


@transaction.atomic(durable=True)
def credit_terms_change(
    *, actor: Actor, organization_id: int, credit_limit, payment_terms_days
) -> BillingProfile:
    """Change an invoiced organisation's credit limit or payment terms (new invoices use them)."""
    from billing.payments.services import profile_for

    _finance(actor)
    organization = _locked_organization(organization_id)
    if organization.billing_mode != BillingMode.INVOICED:
        raise Conflict(
            _("This organisation is not invoiced monthly: grant a request first."),
            code=BillingErrorCode.CREDIT_TERMS_NONE,
        )
    limit, days = _terms(organization, credit_limit, payment_terms_days)
    profile = profile_for(organization, lock=True)
    before = {
        "credit_limit": None if profile.credit_limit is None else str(profile.credit_limit),
        "payment_terms_days": profile.payment_terms_days,
    }
    if before == {"credit_limit": str(limit), "payment_terms_days": days}:
        return profile
    profile.credit_limit, profile.payment_terms_days = limit, days
    profile.updated_at = timezone.now()
    profile.save(update_fields=["credit_limit", "payment_terms_days", "updated_at"])
    _rearm_notices(organization)
    audit_record(
        actor=actor,
        action="billing.credit_terms_change",
        target=profile,
        organization=organization,
        details={
            "before": before,
            "after": {"credit_limit": str(limit), "payment_terms_days": days},
            "currency": organization.currency,
        },
    )
    return profile


@transaction.atomic(durable=True)
def credit_terms_revoke(*, actor: Actor, organization_id: int, reason: str) -> BillingProfile:
    """Back to prepaid credit: what runs from now on needs credit; invoices already issued stay
    due."""
    from billing.payments.services import profile_for

    _finance(actor)
    reason = (reason or "").strip()
    if not reason:
        raise _invalid("reason", _("Say why the credit terms are revoked."))
    organization = _locked_organization(organization_id)
    if organization.billing_mode != BillingMode.INVOICED:
        raise Conflict(
            _("This organisation is not invoiced monthly."), code=BillingErrorCode.CREDIT_TERMS_NONE
        )
    profile = profile_for(organization, lock=True)
    before = None if profile.credit_limit is None else str(profile.credit_limit)
    organization.billing_mode = BillingMode.PREPAID
    organization.save(update_fields=["billing_mode"])
    profile.credit_limit = None
    profile.updated_at = timezone.now()
    profile.save(update_fields=["credit_limit", "updated_at"])
    _rearm_notices(organization)
    audit_record(
        actor=actor,
        action="billing.credit_terms_revoke",
        target=profile,
        organization=organization,
        details={
            "billing_mode": [BillingMode.INVOICED, BillingMode.PREPAID],
            "credit_limit": [before, None],
            "reason": reason[:500],
        },
    )
    return profile
