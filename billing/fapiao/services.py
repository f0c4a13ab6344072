"""Fapiao (发票): customers request them, finance has the tax authority issue them.

In China the seller does not number its own VAT invoices: it submits the buyer and the lines to
the tax platform, which returns a 20-digit fapiao number and the file (PDF, OFD or XML). The
portal keeps the requests, exports them as the platform's batch-issuance spreadsheet
(``billing.fapiao.exports``), and records what was issued.

**What may be put on a fapiao** ("paid and consumed"): a fapiao is requested for invoices, never
for an amount typed in. An invoice qualifies when it is a monthly invoice (not a credit note)
in CNY whose status is ``paid``. That covers both billing modes: an invoiced organisation's
invoice is paid once its payment was recorded; a prepaid organisation's invoice is issued at
the month close for the usage of the closed month and paid from its credits at once, so what a
prepaid organisation can get a fapiao for is what it consumed, never the credit it merely
bought (a top-up is not on any invoice). Of such an invoice, what is **kept** is its total plus
its credit notes (negative) minus the refunds of payments made for it; what may still be
requested is kept minus what requests already cover (requested, exported or issued, less the
red-letter fapiao recorded against them) (``billing.fapiao.selectors``). Only CNY: a fapiao is a
Chinese tax document.

**Amounts** are ``Decimal`` in CNY, tax included (价税合计, what was paid), split into amount
before tax and tax once per fapiao line (``billing.fapiao.lines``); a request's amount is the
sum of what it covers of each invoice, exactly.

**Special VAT invoices** (专用发票) let the buyer deduct input VAT, so they are issued only to
a verified enterprise (``Organization.verified_as``), under the Unified Social Credit Code it
was verified with, and need its registered address, phone, bank and account.

**Red letters** (红字发票): an issued fapiao is never edited. A credit note or refund that would
leave an invoice with less kept than its fapiao cover is refused until finance records a
red-letter fapiao against the original for the difference (``corrections_check``, called by
``credit_note_create`` and ``refund_create``); while a request covering the invoice is still
open, finance rejects it first.

**Locks**: the organisation, then its invoices (``select_for_update``), then the requests, the
house order; so a request and a credit note on the same invoice never both pass their checks.
Each service runs in one transaction and writes an audit row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.fapiao import files, selectors
from billing.fapiao.lines import fapiao_lines
from billing.models import (
    COVERING_STATUSES,
    OPEN_STATUSES,
    FapiaoCoverage,
    FapiaoKind,
    FapiaoLine,
    FapiaoRequest,
    FapiaoStatus,
    Invoice,
    RedLetterFapiao,
)
from portal.accounts import identity
from portal.accounts.locks import lock_organization
from portal.accounts.models import Organization, OrganizationVerification, VerificationKind
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.background import enqueue_on_commit
from portal.errors import Conflict, ErrorCode, InvalidInput, NotFound, PermissionDenied
from portal.money import parse_amount

ISSUE_PERMISSION = "billing.issue_fapiao"


@dataclass(frozen=True)
class Buyer:
    title: str
    tax_id: str
    address: str = ""
    phone: str = ""
    bank: str = ""
    account: str = ""


def min_amount() -> Decimal:
    return Decimal(str(settings.FAPIAO_MIN_AMOUNT))


def verified_credit_code(organization: Organization) -> str:
    """The Unified Social Credit Code the organisation was verified as an enterprise with."""
    if organization.verified_as != VerificationKind.ENTERPRISE:
        return ""
    verification = (
        OrganizationVerification.objects.filter(
            organization=organization,
            kind=VerificationKind.ENTERPRISE,
            status="approved",
            is_current=True,
        )
        .order_by("-pk")
        .first()
    )
    return identity.normalize(verification.credit_code) if verification else ""


def _buyer_clean(kind: str, buyer: Buyer, organization: Organization) -> tuple[Buyer, dict]:
    errors: dict[str, str] = {}
    title = " ".join((buyer.title or "").split())
    if not title or len(title) > 200:
        errors["buyer_title"] = _("Enter the buyer's name as registered (at most 200 characters).")
    tax_id = identity.normalize(buyer.tax_id or "")
    if not identity.credit_code_valid(tax_id):
        errors["buyer_tax_id"] = _(
            "This is not a valid Unified Social Credit Code (18 characters with its check "
            "character)."
        )
    fields = {
        "buyer_address": (buyer.address, 300),
        "buyer_phone": (buyer.phone, 40),
        "buyer_bank": (buyer.bank, 200),
        "buyer_account": (buyer.account, 64),
    }
    clean = {name: " ".join((value or "").split()) for name, (value, _limit) in fields.items()}
    for name, (_value, limit) in fields.items():
        if len(clean[name]) > limit:
            errors[name] = _("At most %(limit)s characters.") % {"limit": limit}
        elif kind == FapiaoKind.SPECIAL and not clean[name]:
            errors[name] = _("A special VAT invoice needs this.")
    cleaned = Buyer(
        title=title,
        tax_id=tax_id,
        address=clean["buyer_address"],
        phone=clean["buyer_phone"],
        bank=clean["buyer_bank"],
        account=clean["buyer_account"],
    )
    if kind == FapiaoKind.SPECIAL and "buyer_tax_id" not in errors:
        verified = verified_credit_code(organization)
        if verified and verified != tax_id:
            errors["buyer_tax_id"] = _(
                "A special VAT invoice goes to the enterprise this organisation was verified "
                "as: use its code %(code)s."
            ) % {"code": verified}
    return cleaned, errors


def _error_code(errors: dict) -> str:
    if "buyer_tax_id" in errors:
        return BillingErrorCode.FAPIAO_CREDIT_CODE_INVALID
    if any(name in errors for name in ("buyer_address", "buyer_phone", "buyer_bank")):
        return BillingErrorCode.FAPIAO_SPECIAL_DETAILS_MISSING
    if "buyer_account" in errors:
        return BillingErrorCode.FAPIAO_SPECIAL_DETAILS_MISSING
    return BillingErrorCode.FAPIAO_BUYER_INVALID


def request_create(
    *,
    actor: Actor,
    kind: str,
    invoice_ids: list[int],
    buyer: Buyer,
    email: str = "",
) -> FapiaoRequest:
    """Ask for one fapiao over what is still invoiceable of the given paid invoices (owners
    and billing members). Refused with a code and nothing written: an unknown kind, no
    invoices, another currency, an invoice that is not paid or has nothing left, a total
    below ``settings.FAPIAO_MIN_AMOUNT``, a buyer code that is not a valid Unified Social
    Credit Code, and for a special VAT invoice an organisation that is not a verified
    enterprise or missing address, phone, bank or account. Another organisation's invoice
    answers 404."""
    actor = authorize(actor, Action.BILLING_MANAGE)
    organization = actor.organization
    if kind not in FapiaoKind.values:
        message = _("Choose an ordinary or a special VAT invoice.")
        raise InvalidInput(
            message, code=BillingErrorCode.FAPIAO_KIND_INVALID, details={"kind": message}
        )
    if organization.currency != selectors.FAPIAO_CURRENCY:
        raise InvalidInput(
            _("Fapiao are issued for invoices in CNY; this organisation is billed in %(c)s.")
            % {"c": organization.currency},
            code=BillingErrorCode.FAPIAO_CURRENCY_NOT_CNY,
        )
    if kind == FapiaoKind.SPECIAL and organization.verified_as != VerificationKind.ENTERPRISE:
        raise PermissionDenied(
            _(
                "A special VAT invoice is issued only to a verified enterprise: verify the "
                "organisation as an enterprise first, or ask for an ordinary invoice."
            ),
            code=BillingErrorCode.FAPIAO_SPECIAL_NEEDS_ENTERPRISE,
        )
    try:
        ids = sorted({int(pk) for pk in invoice_ids or []})
    except (TypeError, ValueError):
        ids = []
    if not ids:
        message = _("Choose at least one paid invoice.")
        raise InvalidInput(
            message, code=BillingErrorCode.FAPIAO_NO_INVOICES, details={"invoices": message}
        )
    buyer, errors = _buyer_clean(kind, buyer, organization)
    if errors:
        raise InvalidInput(
            _("Check the buyer's details."), code=_error_code(errors), details=errors
        )
    email = (email or "").strip()[:254] or organization.billing_email
    with transaction.atomic(durable=True):
        lock_organization(organization.pk)
        invoices = list(
            Invoice.objects.select_for_update()
            .filter(organization=organization, pk__in=ids)
            .order_by("pk")
        )
        if len(invoices) != len(ids):
            raise NotFound(_("No such invoice in this organisation."))
        eligible = set(
            selectors.eligible_invoices(organization)
            .filter(pk__in=ids)
            .values_list("pk", flat=True)
        )
        items = selectors.invoiceable_for(invoices)
        refused = [
            item.invoice.number or str(item.invoice.pk)
            for item in items
            if item.invoice.pk not in eligible or item.amount <= 0
        ]
        if refused:
            message = _(
                "Nothing more can be put on a fapiao for %(invoices)s: only paid invoices in "
                "CNY, up to what was kept and not yet requested."
            ) % {"invoices": ", ".join(refused)}
            raise Conflict(
                message,
                code=BillingErrorCode.FAPIAO_INVOICE_NOT_INVOICEABLE,
                details={"invoices": message},
            )
        amount = sum((item.amount for item in items), Decimal(0))
        if amount < min_amount():
            message = _(
                "A fapiao request covers at least %(min)s CNY; these invoices come to %(amount)s "
                "CNY. Add more invoices."
            ) % {"min": min_amount(), "amount": amount}
            raise InvalidInput(
                message,
                code=BillingErrorCode.FAPIAO_AMOUNT_TOO_SMALL,
                details={"invoices": message, "minimum": str(min_amount())},
            )
        drafts = fapiao_lines([(item.invoice, item.amount) for item in items])
        request = FapiaoRequest.objects.create(
            organization=organization,
            kind=kind,
            currency=selectors.FAPIAO_CURRENCY,
            amount=amount,
            net=sum((line.net for line in drafts), Decimal(0)),
            tax=sum((line.tax for line in drafts), Decimal(0)),
            buyer_title=buyer.title,
            buyer_tax_id=buyer.tax_id,
            buyer_address=buyer.address,
            buyer_phone=buyer.phone,
            buyer_bank=buyer.bank,
            buyer_account=buyer.account,
            email=email,
            requested_by=actor.user,
            requested_by_label=actor.label[:200],
        )
        FapiaoCoverage.objects.bulk_create(
            FapiaoCoverage(request=request, invoice=item.invoice, amount=item.amount)
            for item in items
        )
        FapiaoLine.objects.bulk_create(
            FapiaoLine(
                request=request,
                position=position,
                name=line.name,
                tax_code=line.tax_code,
                vat_rate=line.vat_rate,
                gross=line.gross,
                net=line.net,
                tax=line.tax,
            )
            for position, line in enumerate(drafts, start=1)
        )
        audit_record(
            actor=actor,
            action="fapiao.request",
            target=request,
            details={
                "kind": kind,
                "amount": str(amount),
                "currency": request.currency,
                "invoices": [item.invoice.number for item in items],
            },
        )
    return request


# --- finance ------------------------------------------------------------------------------------


def finance_check(user) -> None:
    if not (user.is_active and user.is_staff and user.has_perm(ISSUE_PERMISSION)):
        raise PermissionDenied(
            _("Only finance staff work the fapiao queue."), code=BillingErrorCode.FINANCE_ONLY
        )


def staff_actor(user, organization: Organization | None = None, ip: str | None = None) -> Actor:
    return Actor(user=user, organization=organization, role=None, ip_address=ip, operator=True)


def _locked_request(request_id: int) -> FapiaoRequest:
    organization_id = (
        FapiaoRequest.objects.filter(pk=request_id)
        .values_list("organization_id", flat=True)
        .first()
    )
    if organization_id is None:
        raise NotFound(_("No such fapiao request."))
    lock_organization(organization_id)
    return (
        FapiaoRequest.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=request_id)
    )


def request_reject(*, user, request_id: int, reason: str, ip: str | None = None) -> FapiaoRequest:
    """Refuse a request not issued yet, saying why: what it covered may be requested again."""
    finance_check(user)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the request is rejected."), code=BillingErrorCode.REASON_REQUIRED
        )
    with transaction.atomic(durable=True):
        request = _locked_request(request_id)
        if request.status not in OPEN_STATUSES:
            raise Conflict(
                _("This request was already issued or rejected."),
                code=BillingErrorCode.FAPIAO_NOT_OPEN,
            )
        request.status = FapiaoStatus.REJECTED
        request.reject_reason = reason[:300]
        request.decided_by = user
        request.decided_at = timezone.now()
        request.save(update_fields=["status", "reject_reason", "decided_by", "decided_at"])
        audit_record(
            actor=staff_actor(user, request.organization, ip),
            action="fapiao.reject",
            target=request,
            organization=request.organization,
            details={"reason": reason, "staff": user.email},
        )
    return request


@dataclass(frozen=True)
class Batch:
    filename: str
    content: bytes
    count: int


def queue():
    """Requests finance still has to issue, oldest first, with what the export reads."""
    return (
        FapiaoRequest.objects.filter(status__in=OPEN_STATUSES)
        .select_related("organization")
        .prefetch_related("lines", "covers__invoice")
        .order_by("created_at", "pk")
    )


def recent_decided(limit: int = 30):
    return (
        FapiaoRequest.objects.exclude(status__in=OPEN_STATUSES)
        .select_related("organization")
        .order_by("-decided_at", "-pk")[:limit]
    )


def request_export(*, user, request_ids: list[int] | None = None, ip: str | None = None) -> Batch:
    """The batch-issuance spreadsheet of the open requests (all of them, or those named);
    requested ones become ``exported`` (sent to the tax platform). Exporting again is
    allowed: the platform's serial numbers (``FP<id>``) make a row found twice the same."""
    from billing.fapiao.exports import batch_xlsx

    finance_check(user)
    with transaction.atomic(durable=True):
        chosen = queue()
        if request_ids:
            chosen = chosen.filter(pk__in=request_ids)
        requests = list(chosen.select_for_update(of=("self",)))
        if not requests:
            raise Conflict(
                _("No open fapiao request to export."), code=BillingErrorCode.FAPIAO_NOT_OPEN
            )
        now = timezone.now()
        fresh = [r.pk for r in requests if r.status == FapiaoStatus.PENDING]
        FapiaoRequest.objects.filter(pk__in=fresh).update(
            status=FapiaoStatus.EXPORTED, exported_at=now
        )
        content = batch_xlsx(requests)
        for request in requests:
            audit_record(
                actor=staff_actor(user, request.organization, ip),
                action="fapiao.export",
                target=request,
                organization=request.organization,
                details={"staff": user.email, "again": request.pk not in fresh},
            )
    return Batch(
        filename=f"fapiao-batch-{now:%Y%m%d-%H%M%S}.xlsx", content=content, count=len(requests)
    )


def _fapiao_number(value: str, field: str = "number") -> str:
    number = "".join((value or "").split())
    if not re.fullmatch(r"[0-9]{20}", number):
        message = _("A fapiao number is the 20 digits the tax platform gave.")
        raise InvalidInput(
            message, code=BillingErrorCode.FAPIAO_NUMBER_INVALID, details={field: message}
        )
    taken = (
        FapiaoRequest.objects.filter(number=number).exists()
        or RedLetterFapiao.objects.filter(number=number).exists()
    )
    if taken:
        message = _("Fapiao %(number)s is recorded already.") % {"number": number}
        raise Conflict(message, code=BillingErrorCode.ALREADY_RECORDED, details={field: message})
    return number


def _amounts(values: dict, *, message: str) -> dict:
    """CNY amounts of a recorded fapiao as finance typed them (the tax may be zero); every
    amount that cannot be read is named in one ``amount_invalid``."""
    errors: dict[str, str] = {}
    amounts = {}
    for field, value in values.items():
        try:
            amounts[field] = parse_amount(value, "CNY", field=field, allow_zero=field == "tax")
        except InvalidInput as exc:
            errors.update(exc.details)
    if errors:
        raise InvalidInput(message, code=ErrorCode.AMOUNT_INVALID, details=errors)
    return amounts


def _issued_on(value, *, not_before) -> date:
    try:
        day = value if isinstance(value, date) else date.fromisoformat(str(value or "").strip())
    except ValueError:
        message = _("Enter the date as YYYY-MM-DD.")
        raise InvalidInput(message, details={"issued_on": message}) from None
    if day > timezone.now().date() or day < not_before:
        message = _("The date issued lies between the request and today.")
        raise InvalidInput(message, details={"issued_on": message})
    return day


def request_record_issued(
    *,
    user,
    request_id: int,
    number: str,
    issued_on,
    net,
    tax,
    total,
    upload,
    ip: str | None = None,
) -> FapiaoRequest:
    """Record the fapiao the tax authority issued for a request: its 20-digit number, date,
    amounts (the total must be the request's, and net plus tax the total) and its file (PDF,
    OFD or XML, checked by content). The customer is emailed after commit. Nothing is
    written, and the file is not kept, when anything is refused."""
    finance_check(user)
    amounts = _amounts(
        {"net": net, "tax": tax, "total": total}, message=_("Check the fapiao's amounts.")
    )
    checked, content = files.file_check(upload)
    with transaction.atomic(durable=True):
        request = _locked_request(request_id)
        if request.status not in OPEN_STATUSES:
            raise Conflict(
                _("This request was already issued or rejected."),
                code=BillingErrorCode.FAPIAO_NOT_OPEN,
            )
        number = _fapiao_number(number)
        day = _issued_on(issued_on, not_before=timezone.localdate(request.created_at))
        if (
            amounts["total"] != request.amount
            or amounts["net"] + amounts["tax"] != amounts["total"]
        ):
            message = _(
                "The fapiao's total must be the request's %(amount)s CNY, and its amount "
                "before tax plus its tax the total."
            ) % {"amount": request.amount}
            raise InvalidInput(
                message,
                code=BillingErrorCode.FAPIAO_AMOUNTS_MISMATCH,
                details={"total": message},
            )
        path = files.file_store(content, checked, organization_id=request.organization_id)
        try:
            now = timezone.now()
            request.status = FapiaoStatus.ISSUED
            request.number = number
            request.issued_on = day
            request.issued_net = amounts["net"]
            request.issued_tax = amounts["tax"]
            request.issued_total = amounts["total"]
            request.file_name = checked.name
            request.file_path = path
            request.file_content_type = checked.content_type
            request.file_size = checked.size
            request.issued_by = user
            request.issued_at = now
            request.decided_by = user
            request.decided_at = now
            request.save(
                update_fields=[
                    "status",
                    "number",
                    "issued_on",
                    "issued_net",
                    "issued_tax",
                    "issued_total",
                    "file_name",
                    "file_path",
                    "file_content_type",
                    "file_size",
                    "issued_by",
                    "issued_at",
                    "decided_by",
                    "decided_at",
                ]
            )
            audit_record(
                actor=staff_actor(user, request.organization, ip),
                action="fapiao.issued",
                target=request,
                organization=request.organization,
                details={
                    "number": number,
                    "issued_on": day.isoformat(),
                    "total": str(amounts["total"]),
                    "currency": request.currency,
                    "file": checked.content_type,
                    "staff": user.email,
                },
            )
        except BaseException:
            files.file_delete(path)  # nothing half-written: no file without its record
            raise
        from billing.fapiao.tasks import fapiao_issued_notify

        enqueue_on_commit(fapiao_issued_notify, request.pk)
    return request


# --- corrections and red letters ----------------------------------------------------------------


def corrections_check(invoice: Invoice, *, reduction: Decimal) -> None:
    """Refuse a credit note or refund that takes ``reduction`` (tax included) off what an
    invoice kept when its fapiao would then cover more than is kept: a request still open must
    be rejected first (``fapiao_request_open``), an issued fapiao needs a red-letter fapiao
    for at least the difference (``fapiao_red_letter_required``). Called under the
    organisation's lock by ``credit_note_create`` and ``refund_create``."""
    if reduction <= 0 or invoice.currency != selectors.FAPIAO_CURRENCY:
        return
    [item] = selectors.invoiceable_for([invoice])
    short = item.covered - (item.kept - reduction)
    if short <= 0:
        return
    covers = list(
        FapiaoCoverage.objects.filter(
            invoice=invoice, request__status__in=COVERING_STATUSES
        ).select_related("request")
    )
    open_ones = [c.request for c in covers if c.request.status in OPEN_STATUSES]
    if open_ones:
        raise Conflict(
            _(
                "A fapiao request covering %(invoice)s is not issued yet (%(serials)s): reject "
                "it, or record it issued and then a red-letter fapiao, before this correction."
            )
            % {"invoice": invoice.number, "serials": ", ".join(r.serial for r in open_ones)},
            code=BillingErrorCode.FAPIAO_REQUEST_OPEN,
            details={"requests": [r.pk for r in open_ones]},
        )
    numbers = [c.request.number for c in covers]
    raise Conflict(
        _(
            "Fapiao %(numbers)s cover %(invoice)s: record a red-letter fapiao of at least "
            "%(short)s CNY against it first, so the fapiao never exceed what is kept."
        )
        % {"numbers": ", ".join(numbers), "invoice": invoice.number, "short": short},
        code=BillingErrorCode.FAPIAO_RED_LETTER_REQUIRED,
        details={"fapiao": numbers, "red_letter_at_least": str(short)},
    )


def red_letter_record(
    *,
    user,
    original_number: str,
    invoice_number: str,
    number: str,
    issued_on,
    amount,
    net,
    tax,
    reason: str,
    ip: str | None = None,
) -> RedLetterFapiao:
    """Record a red-letter (红字) fapiao the tax authority issued against an issued fapiao: it
    reverses ``amount`` (tax included) of what the original covers of one invoice, never more
    than that cover less the red letters recorded before (``fapiao_red_letter_too_large``)."""
    finance_check(user)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the fapiao is reversed."), code=BillingErrorCode.REASON_REQUIRED
        )
    amounts = _amounts(
        {"amount": amount, "net": net, "tax": tax},
        message=_("Check the red-letter fapiao's amounts."),
    )
    if amounts["net"] + amounts["tax"] != amounts["amount"]:
        message = _("The amount before tax plus the tax must be the red-letter total.")
        raise InvalidInput(
            message, code=BillingErrorCode.FAPIAO_AMOUNTS_MISMATCH, details={"amount": message}
        )
    original_id = (
        FapiaoRequest.objects.filter(number="".join((original_number or "").split()))
        .values_list("pk", flat=True)
        .first()
    )
    if original_id is None:
        message = _("No issued fapiao has this number.")
        raise InvalidInput(
            message, code=BillingErrorCode.FAPIAO_NOT_ISSUED, details={"original": message}
        )
    with transaction.atomic(durable=True):
        original = _locked_request(original_id)
        cover = (
            FapiaoCoverage.objects.select_related("invoice")
            .filter(request=original, invoice__number=(invoice_number or "").strip())
            .first()
        )
        if cover is None:
            message = _("Fapiao %(number)s does not cover invoice %(invoice)s.") % {
                "number": original.number,
                "invoice": invoice_number,
            }
            raise InvalidInput(
                message, code=BillingErrorCode.FAPIAO_NOT_ISSUED, details={"invoice": message}
            )
        reversed_before = sum(
            RedLetterFapiao.objects.filter(original=original, invoice=cover.invoice).values_list(
                "amount", flat=True
            ),
            Decimal(0),
        )
        left = cover.amount - reversed_before
        if amounts["amount"] > left:
            message = _(
                "At most %(left)s CNY of fapiao %(number)s on %(invoice)s can still be reversed."
            ) % {"left": left, "number": original.number, "invoice": cover.invoice.number}
            raise Conflict(
                message,
                code=BillingErrorCode.FAPIAO_RED_LETTER_TOO_LARGE,
                details={"amount": message, "reversible": str(left)},
            )
        red_number = _fapiao_number(number)
        day = _issued_on(issued_on, not_before=original.issued_on)
        red = RedLetterFapiao.objects.create(
            original=original,
            invoice=cover.invoice,
            number=red_number,
            issued_on=day,
            amount=amounts["amount"],
            net=amounts["net"],
            tax=amounts["tax"],
            reason=reason[:300],
            recorded_by=user,
        )
        audit_record(
            actor=staff_actor(user, original.organization, ip),
            action="fapiao.red_letter",
            target=red,
            organization=original.organization,
            details={
                "original": original.number,
                "invoice": cover.invoice.number,
                "amount": str(red.amount),
                "currency": "CNY",
                "reason": reason,
                "staff": user.email,
            },
        )
    return red
