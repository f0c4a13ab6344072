"""Bank transfers: the payment reference, customer notices, and finance's received lines
(entered by hand or imported from a statement), matched once to an organisation.

Matching locks the organisation, then the line (the house order); the credit is posted with
the ledger key ``bank:<line id>`` beside a succeeded ``Payment`` (purpose ``bank_transfer``)
for the customer's payment history, so two finance tabs matching the same line post once.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from billing.ledger.services import ledger_post
from billing.models import (
    BankLine,
    BankTransferNotice,
    EntryKind,
    LineSource,
    LineStatus,
    NoticeStatus,
    Payment,
    PaymentPurpose,
    PaymentReference,
    PaymentStatus,
)
from billing.payments import hooks
from billing.transfers import reference as refs
from billing.transfers import slips
from portal.accounts.locks import lock_organization
from portal.accounts.models import Currency, Organization, User
from portal.accounts.roles import Action
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from portal.money import parse_amount

MATCH_PERMISSION = "billing.match_bank_transfer"
PROVIDER = "bank_transfer"
STATEMENT_COLUMNS = (
    "value_date",
    "amount",
    "currency",
    "payer_name",
    "payer_account",
    "remark",
    "bank_transaction_id",
)
STATEMENT_MAX_ROWS = 5000
REFERENCE_ATTEMPTS = 10


# --- the payment reference ---------------------------------------------------------------------


def reference_for(organization: Organization) -> PaymentReference:
    """The organisation's payment reference, made on first need and never changed."""
    found = PaymentReference.objects.filter(organization=organization).first()
    if found is not None:
        return found
    for _attempt in range(REFERENCE_ATTEMPTS):
        try:
            with transaction.atomic():
                return PaymentReference.objects.create(
                    organization=organization, code=refs.reference_generate()
                )
        except IntegrityError:  # the code was taken, or a concurrent request made it first
            found = PaymentReference.objects.filter(organization=organization).first()
            if found is not None:
                return found
    raise Conflict(_("No free payment reference was found; try again."))


def organization_for_reference(code: str) -> Organization | None:
    if not refs.reference_valid(code):
        return None
    found = (
        PaymentReference.objects.filter(code=refs.normalize(code))
        .select_related("organization")
        .first()
    )
    return found.organization if found else None


def suggest_organization(remark: str) -> Organization | None:
    """The organisation whose valid payment reference the remark quotes (the first one)."""
    for code in refs.references_in(remark):
        organization = organization_for_reference(code)
        if organization is not None:
            return organization
    return None


def bank_account() -> dict:
    """The centre's account that customers transfer to (``settings.BANK_TRANSFER_ACCOUNT``)."""
    return dict(settings.BANK_TRANSFER_ACCOUNT)


# --- the customer's notices ---------------------------------------------------------------------


def _sent_on(value) -> date:
    if isinstance(value, date):
        sent = value
    else:
        try:
            sent = date.fromisoformat(str(value or "").strip())
        except ValueError:
            message = _("Enter the date as YYYY-MM-DD.")
            raise InvalidInput(message, details={"sent_on": message}) from None
    if sent > timezone.now().date():
        message = _("The date sent cannot be in the future.")
        raise InvalidInput(message, details={"sent_on": message})
    return sent


def notice_create(
    *, actor: Actor, amount, sent_on, payer_name: str, slip, currency: str | None = None
) -> BankTransferNotice:
    """Tell finance about a transfer sent, with its remittance slip (owners and billing members).
    The amount is in the organisation's currency; another currency is refused."""
    actor = authorize(actor, Action.BILLING_MANAGE)
    organization = actor.organization
    if currency and currency.upper() != organization.currency:
        message = _("Transfers are made in %(currency)s, the organisation's currency.") % {
            "currency": organization.currency
        }
        raise InvalidInput(
            message,
            code=BillingErrorCode.BANK_TRANSFER_CURRENCY_MISMATCH,
            details={"currency": message},
        )
    errors: dict[str, str] = {}
    try:
        amount = parse_amount(amount, organization.currency)
    except InvalidInput as exc:
        errors.update(exc.details)
    try:
        sent_on = _sent_on(sent_on)
    except InvalidInput as exc:
        errors.update(exc.details)
    payer_name = (payer_name or "").strip()
    if not payer_name:
        errors["payer_name"] = _("Enter the name of the account the transfer came from.")
    checked = None
    try:
        checked = slips.slip_check(slip)
    except InvalidInput as exc:
        if not errors:
            raise
        errors.update(exc.details)
    if errors:
        raise InvalidInput(_("Check the transfer notice."), details=errors)
    path = slips.slip_store(slip, checked, organization_id=organization.pk)
    try:
        with transaction.atomic(durable=True):
            notice = BankTransferNotice.objects.create(
                organization=organization,
                reference=reference_for(organization).code,
                amount=amount,
                currency=organization.currency,
                sent_on=sent_on,
                payer_name=payer_name[:200],
                slip_name=checked.name,
                slip_path=path,
                slip_content_type=checked.content_type,
                slip_size=checked.size,
                created_by=actor.user,
                created_by_label=actor.label[:200],
            )
            audit_record(
                actor=actor,
                action="bank_transfer.notice",
                target=notice,
                details={"amount": str(amount), "currency": notice.currency},
            )
    except BaseException:
        slips.slip_delete(path)  # nothing half-written: no slip without its notice
        raise
    return notice


def notices(organization: Organization):
    return BankTransferNotice.objects.filter(organization=organization)


def notice_for(organization: Organization, notice_id: int) -> BankTransferNotice:
    notice = notices(organization).filter(pk=notice_id).first()
    if notice is None:
        raise NotFound(_("No such transfer notice in this organisation."))
    return notice


# --- finance: received lines --------------------------------------------------------------------


def finance_check(user: User) -> None:
    if not (user.is_active and user.is_staff and user.has_perm(MATCH_PERMISSION)):
        raise PermissionDenied(
            _("Only finance staff match bank transfers."), code=BillingErrorCode.FINANCE_ONLY
        )


def _staff_actor(user: User, organization: Organization | None = None, ip: str | None = None):
    return Actor(user=user, organization=organization, role=None, ip_address=ip, operator=True)


def _line_clean(data: dict) -> tuple[dict, dict[str, str]]:
    """Check one line's fields; returns (clean values, errors by field)."""
    errors: dict[str, str] = {}
    clean: dict = {}
    raw_date = data.get("value_date")
    if isinstance(raw_date, date):
        clean["value_date"] = raw_date
    else:
        try:
            clean["value_date"] = date.fromisoformat(str(raw_date or "").strip())
        except ValueError:
            errors["value_date"] = _("Enter the value date as YYYY-MM-DD.")
    currency = str(data.get("currency") or "").strip().upper()
    if currency not in Currency.values:
        errors["currency"] = _("Use one of the currencies %(currencies)s.") % {
            "currencies": ", ".join(Currency.values)
        }
    else:
        clean["currency"] = currency
        try:
            clean["amount"] = parse_amount(data.get("amount"), currency)
        except InvalidInput as exc:
            errors["amount"] = exc.details.get("amount", exc.message)
    payer_name = str(data.get("payer_name") or "").strip()
    if not payer_name:
        errors["payer_name"] = _("Enter the payer's name.")
    clean["payer_name"] = payer_name[:200]
    for name, limit in (("payer_account", 64), ("remark", 300), ("bank_reference", 100)):
        value = str(data.get(name) or "").strip()
        if len(value) > limit:
            errors[name] = _("At most %(limit)s characters.") % {"limit": limit}
        clean[name] = value
    return clean, errors


def _line_new(clean: dict, *, user: User, source: str) -> BankLine:
    return BankLine(
        source=source,
        created_by=user,
        suggested_organization=suggest_organization(clean["remark"]),
        **clean,
    )


def bank_line_create(*, user: User, ip: str | None = None, **data) -> BankLine:
    """Finance enters a received transfer by hand (value date, amount, currency, payer name and
    account, remark, the bank's reference). A bank reference already recorded is refused."""
    finance_check(user)
    clean, errors = _line_clean(data)
    if errors:
        raise InvalidInput(_("Check the received transfer."), details=errors)
    with transaction.atomic(durable=True):
        if (
            clean["bank_reference"]
            and BankLine.objects.filter(bank_reference=clean["bank_reference"]).exists()
        ):
            raise Conflict(
                _("A transfer with this bank reference is already recorded."),
                code=BillingErrorCode.ALREADY_RECORDED,
                details={"bank_reference": _("Already recorded.")},
            )
        line = _line_new(clean, user=user, source=LineSource.MANUAL)
        try:
            with transaction.atomic():
                line.save()
        except IntegrityError:
            raise Conflict(
                _("A transfer with this bank reference is already recorded."),
                code=BillingErrorCode.ALREADY_RECORDED,
            ) from None
        audit_record(
            actor=_staff_actor(user, ip=ip),
            action="bank_transfer.line_entered",
            target=line,
            organization=line.suggested_organization,
            details={"amount": str(line.amount), "currency": line.currency},
        )
    return line


@dataclass
class ImportReport:
    created: list[BankLine] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # bank transaction ids already recorded


def statement_parse(content: bytes | str) -> list[dict]:
    """Read a bank statement CSV (UTF-8, a header row naming ``STATEMENT_COLUMNS`` in any order)
    and check every row. Any bad row refuses the whole file, with every row's errors in
    ``details["rows"]`` (row numbers count the header as row 1)."""
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInput(
                _("The statement must be a UTF-8 CSV file."),
                code=BillingErrorCode.BANK_STATEMENT_INVALID,
            ) from None
    reader = csv.DictReader(io.StringIO(content))
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in STATEMENT_COLUMNS if name not in header]
    if missing:
        raise InvalidInput(
            _("The statement lacks the columns %(columns)s.") % {"columns": ", ".join(missing)},
            code=BillingErrorCode.BANK_STATEMENT_INVALID,
            details={"columns": missing},
        )
    reader.fieldnames = header
    rows, problems, seen = [], [], {}
    for number, raw in enumerate(reader, start=2):
        if number - 1 > STATEMENT_MAX_ROWS:
            raise InvalidInput(
                _("A statement has at most %(count)s rows.") % {"count": STATEMENT_MAX_ROWS},
                code=BillingErrorCode.BANK_STATEMENT_INVALID,
            )
        if None in raw:  # more cells than the header names
            problems.append({"row": number, "errors": {"row": _("Too many cells.")}})
            continue
        if not any((value or "").strip() for value in raw.values()):
            continue  # a blank line
        data = {**raw, "bank_reference": raw.get("bank_transaction_id")}
        clean, errors = _line_clean(data)
        if not clean.get("bank_reference"):
            errors["bank_transaction_id"] = _("Every row needs the bank's transaction id.")
        elif clean["bank_reference"] in seen:
            errors["bank_transaction_id"] = _("Same transaction id as row %(row)s.") % {
                "row": seen[clean["bank_reference"]]
            }
        else:
            seen[clean["bank_reference"]] = number
        if errors:
            problems.append({"row": number, "errors": errors})
        else:
            rows.append(clean)
    if problems:
        raise InvalidInput(
            _("%(count)s rows of the statement are not valid; nothing was imported.")
            % {"count": len(problems)},
            code=BillingErrorCode.BANK_STATEMENT_INVALID,
            details={"rows": problems},
        )
    return rows


def statement_import(*, user: User, content: bytes | str, ip: str | None = None) -> ImportReport:
    """Import a bank statement, all or nothing; lines whose transaction id is already recorded
    are skipped (never doubled). Lines quoting a payment reference get a suggested
    organisation."""
    finance_check(user)
    rows = statement_parse(content)
    report = ImportReport()
    with transaction.atomic(durable=True):
        known = set(
            BankLine.objects.filter(
                bank_reference__in=[row["bank_reference"] for row in rows]
            ).values_list("bank_reference", flat=True)
        )
        for row in rows:
            if row["bank_reference"] in known:
                report.skipped.append(row["bank_reference"])
                continue
            line = _line_new(row, user=user, source=LineSource.STATEMENT)
            try:
                with transaction.atomic():
                    line.save()
            except IntegrityError:  # imported by someone else meanwhile
                report.skipped.append(row["bank_reference"])
                continue
            report.created.append(line)
        audit_record(
            actor=_staff_actor(user, ip=ip),
            action="bank_transfer.statement_imported",
            details={"created": len(report.created), "skipped": report.skipped},
        )
    return report


def lines_unmatched():
    return BankLine.objects.filter(status=LineStatus.UNMATCHED).select_related(
        "suggested_organization"
    )


def lines_decided(limit: int = 50):
    return (
        BankLine.objects.exclude(status=LineStatus.UNMATCHED)
        .select_related("organization", "decided_by")
        .order_by("-decided_at", "-id")[:limit]
    )


def notices_pending():
    return BankTransferNotice.objects.filter(status=NoticeStatus.PENDING).select_related(
        "organization"
    )


def _line_locked(line_id: int) -> BankLine:
    line = BankLine.objects.select_for_update().filter(pk=line_id).first()
    if line is None:
        raise NotFound(_("No such received transfer."))
    return line


def _undecided(line: BankLine) -> None:
    if line.status != LineStatus.UNMATCHED:
        raise Conflict(
            _("This transfer was already %(status)s.")
            % {"status": line.get_status_display().lower()},
            code=BillingErrorCode.BANK_LINE_DECIDED,
        )


def bank_line_match(
    *,
    user: User,
    line_id: int,
    organization: Organization,
    notice_id: int | None = None,
    ip: str | None = None,
) -> BankLine:
    """Credit a received transfer to ``organization``, once: a succeeded bank-transfer payment
    in its history, a ledger credit keyed ``bank:<line id>``, its notice (if any) matched and an
    audit event naming the staff member. A line already matched or returned is refused
    (``bank_line_decided``); so is a currency other than the organisation's, and a notice of
    another amount or organisation."""
    finance_check(user)
    with transaction.atomic(durable=True):
        lock_organization(organization.pk)
        organization = Organization.objects.get(pk=organization.pk)
        line = _line_locked(line_id)
        _undecided(line)
        if line.currency != organization.currency:
            raise InvalidInput(
                _(
                    "This transfer is in %(line)s but %(organization)s pays in %(currency)s; "
                    "return it to the sender instead."
                )
                % {
                    "line": line.currency,
                    "organization": organization.name,
                    "currency": organization.currency,
                },
                code=BillingErrorCode.BANK_TRANSFER_CURRENCY_MISMATCH,
            )
        notice = None
        if notice_id:
            notice = (
                BankTransferNotice.objects.select_for_update()
                .filter(pk=notice_id, organization=organization)
                .first()
            )
            if notice is None:
                raise NotFound(_("No such transfer notice of this organisation."))
            if notice.status != NoticeStatus.PENDING:
                raise Conflict(
                    _("This notice was already decided."),
                    code=BillingErrorCode.BANK_TRANSFER_NOTICE_DECIDED,
                )
            if notice.amount != line.amount or notice.currency != line.currency:
                raise InvalidInput(
                    _("The notice says %(notice)s %(currency)s, the bank %(line)s %(currency)s.")
                    % {"notice": notice.amount, "line": line.amount, "currency": line.currency},
                    code=BillingErrorCode.BANK_TRANSFER_AMOUNT_MISMATCH,
                )
        now = timezone.now()
        payment = Payment.objects.create(
            organization=organization,
            purpose=PaymentPurpose.BANK_TRANSFER,
            amount=line.amount,
            currency=line.currency,
            status=PaymentStatus.SUCCEEDED,
            provider=PROVIDER,
            idempotency_key=f"bank:{line.pk}",
            payment_intent_id=line.bank_reference[:255],
            created_by=user.email,
            succeeded_at=now,
        )
        ledger_post(
            organization=organization,
            kind=EntryKind.TOP_UP,
            amount=line.amount,
            idempotency_key=f"bank:{line.pk}",
            description=f"Bank transfer from {line.payer_name}",
            actor_label=f"operator {user.email}",
            reference=line.bank_reference,
            payment=payment,
        )
        line.status = LineStatus.MATCHED
        line.organization = organization
        line.payment = payment
        line.notice = notice
        line.decided_by = user
        line.decided_at = now
        line.save(
            update_fields=[
                "status",
                "organization",
                "payment",
                "notice",
                "decided_by",
                "decided_at",
            ]
        )
        if notice is not None:
            notice.status = NoticeStatus.MATCHED
            notice.decided_by = user
            notice.decided_at = now
            notice.save(update_fields=["status", "decided_by", "decided_at"])
        audit_record(
            actor=_staff_actor(user, organization, ip),
            action="bank_transfer.match",
            target=line,
            organization=organization,
            details={
                "amount": str(line.amount),
                "currency": line.currency,
                "bank_reference": line.bank_reference,
                "notice": notice.pk if notice else None,
                "staff": user.email,
            },
        )
        hooks.credit_arrived(organization)  # the spend controls hear of it
    return line


def bank_line_return(*, user: User, line_id: int, reason: str, ip: str | None = None) -> BankLine:
    """Mark a transfer nobody can be credited for as returned to the sender, with the reason."""
    finance_check(user)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the transfer is returned."), code=BillingErrorCode.REASON_REQUIRED
        )
    with transaction.atomic(durable=True):
        line = _line_locked(line_id)
        _undecided(line)
        line.status = LineStatus.RETURNED
        line.return_reason = reason[:300]
        line.decided_by = user
        line.decided_at = timezone.now()
        line.save(update_fields=["status", "return_reason", "decided_by", "decided_at"])
        audit_record(
            actor=_staff_actor(user, line.suggested_organization, ip),
            action="bank_transfer.returned",
            target=line,
            organization=line.suggested_organization,
            details={"reason": line.return_reason, "staff": user.email},
        )
    return line


def notice_reject(
    *, user: User, notice_id: int, reason: str, ip: str | None = None
) -> BankTransferNotice:
    """Finance answers a notice no received transfer matches, with the reason the customer sees."""
    finance_check(user)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            _("Say why the notice is rejected."), code=BillingErrorCode.REASON_REQUIRED
        )
    with transaction.atomic(durable=True):
        notice = BankTransferNotice.objects.select_for_update().filter(pk=notice_id).first()
        if notice is None:
            raise NotFound(_("No such transfer notice."))
        if notice.status != NoticeStatus.PENDING:
            raise Conflict(
                _("This notice was already decided."),
                code=BillingErrorCode.BANK_TRANSFER_NOTICE_DECIDED,
            )
        notice.status = NoticeStatus.REJECTED
        notice.reject_reason = reason[:300]
        notice.decided_by = user
        notice.decided_at = timezone.now()
        notice.save(update_fields=["status", "reject_reason", "decided_by", "decided_at"])
        audit_record(
            actor=_staff_actor(user, notice.organization, ip),
            action="bank_transfer.notice_rejected",
            target=notice,
            organization=notice.organization,
            details={"reason": notice.reject_reason, "staff": user.email},
        )
    return notice


def notice_suggested_for(line: BankLine, pending: list[BankTransferNotice]):
    """A pending notice of the suggested organisation with the line's amount, if any."""
    for notice in pending:
        if (
            notice.organization_id == line.suggested_organization_id
            and notice.amount == line.amount
            and notice.currency == line.currency
        ):
            return notice
    return None
