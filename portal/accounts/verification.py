"""Real-name and enterprise verification (实名认证): submit, review, and the policy that says
which actions need which verification where.

An organisation is verified as an **individual** (legal name and resident identity number) or
as an **enterprise** (registered name, Unified Social Credit Code, business licence, and the
authorised person's name and identity number, optionally an authorisation letter). Its current
verification goes ``submitted → approved | rejected``; a rejected or revoked one may be
submitted again (a new row; the old ones are the history), and an organisation verified as an
individual may ask to be verified as an enterprise (it stays verified as an individual until
that is approved). Approval sets
``Organization.verified_as``, which a launch reads with the organisation's row, so the policy
check costs at most one primary-key read.

Identity numbers are encrypted at rest with ``IDENTITY_ENCRYPTION_KEY`` (Fernet: AES-128-CBC
with an HMAC-SHA256 tag), stored with a keyed hash (to find a number without decrypting every
row) and a masked form (``identity.mask``), the only form pages, admin, the API and the audit log
ever show. Documents are checked by their first bytes (PDF, PNG, JPEG) and size, stored in a
private folder and served by views that check who asks.
"""

import hashlib
import hmac
from dataclasses import dataclass
from functools import cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from portal.accounts import identity
from portal.accounts.emails import Email, send_later
from portal.accounts.errors import AccountsErrorCode
from portal.accounts.locks import lock_organization
from portal.accounts.models import (
    Membership,
    Organization,
    OrganizationVerification,
    VerificationKind,
    VerificationStatus,
)
from portal.accounts.roles import Action, Role
from portal.accounts.services import audit_record, authorize
from portal.accounts.types import Actor
from portal.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from portal.sql import rows

REVIEW_PERMISSION = "accounts.review_verification"
VERIFIED_KINDS = frozenset(VerificationKind.values)

# --- encryption at rest -------------------------------------------------------------------------


def _keys() -> list[bytes]:
    keys = [key.strip().encode() for key in settings.IDENTITY_ENCRYPTION_KEY.split(",")]
    return [key for key in keys if key]


@cache
def _fernet_for(keys: tuple[bytes, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "IDENTITY_ENCRYPTION_KEY must be Fernet keys (urlsafe base64 of 32 bytes), "
            "separated by commas."
        ) from None


def _fernet() -> MultiFernet:
    return _fernet_for(tuple(_keys()))


def identity_number_encrypt(number: str) -> str:
    """The Fernet token of a (normalised) identity number, made with the first key."""
    return _fernet().encrypt(identity.normalize(number).encode()).decode()


def identity_number_decrypt(token: str) -> str:
    """The identity number in ``token``; ``cryptography.fernet.InvalidToken`` if no configured
    key made it (or it was altered)."""
    return _fernet().decrypt(token.encode()).decode()


def identity_number_hash(number: str) -> str:
    """HMAC-SHA256 of the normalised number (the same number gives the same hash; without the
    key it cannot be found by hashing the few billion candidates). Keyed with
    ``IDENTITY_HASH_KEY``, or else a key derived from the first encryption key: set it before
    rotating encryption keys, so the hashes stored so far keep matching."""
    secret = settings.IDENTITY_HASH_KEY.encode() or b"derived:" + _keys()[0]
    key = hashlib.sha256(b"identity-number-hash:" + secret).digest()
    return hmac.new(key, identity.normalize(number).encode(), hashlib.sha256).hexdigest()


# --- documents ----------------------------------------------------------------------------------

# The first bytes of each accepted type (the real type, whatever the name or header says).
DOCUMENT_SIGNATURES = (
    (b"%PDF-", "application/pdf", ".pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
)


def document_type(upload) -> str | None:
    """The MIME type of an uploaded file from its first bytes, or None when it is none of
    PDF, PNG and JPEG."""
    upload.seek(0)
    head = upload.read(16)
    upload.seek(0)
    for signature, mime, _suffix in DOCUMENT_SIGNATURES:
        if head.startswith(signature):
            return mime
    return None


def _check_document(upload, field: str, errors: dict, codes: dict) -> str:
    if upload.size > settings.VERIFICATION_DOCUMENT_MAX_BYTES:
        errors[field] = _("The file is larger than %(size)s MiB.") % {
            "size": f"{settings.VERIFICATION_DOCUMENT_MAX_BYTES / 1024 / 1024:g}"
        }
        codes[field] = AccountsErrorCode.DOCUMENT_TOO_LARGE
        return ""
    mime = document_type(upload)
    if mime is None:
        errors[field] = _("Upload a PDF, PNG or JPEG file.")
        codes[field] = AccountsErrorCode.DOCUMENT_INVALID
        return ""
    suffix = next(s for _sig, m, s in DOCUMENT_SIGNATURES if m == mime)
    upload.name = f"document{suffix}"  # the stored name says the real type, nothing else
    return mime


# --- reads --------------------------------------------------------------------------------------


def verification_current(organization: Organization) -> OrganizationVerification | None:
    return (
        OrganizationVerification.objects.filter(organization=organization, is_current=True)
        .select_related("reviewed_by")
        .first()
    )


def verification_state(verification: OrganizationVerification | None) -> str:
    """``unverified``, or the current verification's status."""
    return verification.status if verification is not None else "unverified"


# --- submitting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    kind: str
    name: str = ""
    id_number: str = ""
    credit_code: str = ""
    authorized_person_name: str = ""
    business_licence: object = None  # an UploadedFile
    authorization_letter: object = None


def _validate(submission: Submission) -> tuple[dict, dict, dict]:
    """The cleaned values, and the errors and their codes by field: nothing is written unless
    both are empty."""
    errors: dict[str, str] = {}
    codes: dict[str, str] = {}
    clean: dict = {}
    if submission.kind not in VERIFIED_KINDS:
        errors["kind"] = _("Choose individual or enterprise verification.")
        codes["kind"] = AccountsErrorCode.VERIFICATION_KIND_INVALID
        return clean, errors, codes
    clean["name"] = " ".join((submission.name or "").split())
    if not clean["name"] or len(clean["name"]) > 200:
        errors["name"] = (
            _("Enter the legal name as on the identity card.")
            if submission.kind == VerificationKind.INDIVIDUAL
            else _("Enter the company's registered name as on its business licence.")
        )
        codes["name"] = AccountsErrorCode.NAME_REQUIRED
    number = identity.normalize(submission.id_number or "")
    if not identity.resident_id_valid(number):
        errors["id_number"] = _(
            "This is not a valid 18-character resident identity number (check the date of "
            "birth and the last character)."
        )
        codes["id_number"] = AccountsErrorCode.IDENTITY_NUMBER_INVALID
    clean["id_number"] = number
    if submission.kind == VerificationKind.ENTERPRISE:
        code = identity.normalize(submission.credit_code or "")
        if not identity.credit_code_valid(code):
            errors["credit_code"] = _(
                "This is not a valid 18-character Unified Social Credit Code."
            )
            codes["credit_code"] = AccountsErrorCode.CREDIT_CODE_INVALID
        clean["credit_code"] = code
        clean["authorized_person_name"] = " ".join(
            (submission.authorized_person_name or "").split()
        )
        if not clean["authorized_person_name"] or len(clean["authorized_person_name"]) > 120:
            errors["authorized_person_name"] = _("Enter the authorised person's legal name.")
            codes["authorized_person_name"] = AccountsErrorCode.NAME_REQUIRED
        if submission.business_licence is None:
            errors["business_licence"] = _("Upload the business licence (PDF, PNG or JPEG).")
            codes["business_licence"] = AccountsErrorCode.DOCUMENT_REQUIRED
        else:
            clean["business_licence_type"] = _check_document(
                submission.business_licence, "business_licence", errors, codes
            )
        if submission.authorization_letter is not None:
            clean["authorization_letter_type"] = _check_document(
                submission.authorization_letter, "authorization_letter", errors, codes
            )
    return clean, errors, codes


def verification_submit(*, actor: Actor, submission: Submission) -> OrganizationVerification:
    """Submit the organisation's verification for review (owners only). Refused with the
    field's code (``identity_number_invalid``, ``credit_code_invalid``, ...) and nothing
    written when any field is wrong; refused while one is pending or approved. Documents
    written before a rollback are deleted again."""
    stored: list[OrganizationVerification] = []
    try:
        return _submit(actor=actor, submission=submission, stored=stored)
    except BaseException:
        for verification in stored:
            for file in (verification.business_licence, verification.authorization_letter):
                if file and file.name:
                    file.storage.delete(file.name)
        raise


@transaction.atomic(durable=True)
def _submit(*, actor: Actor, submission: Submission, stored: list) -> OrganizationVerification:
    actor = authorize(actor, Action.ORG_VERIFY, lock=True)
    organization = actor.organization
    clean, errors, codes = _validate(submission)
    if errors:
        first = next(iter(codes.values()))
        raise InvalidInput(
            _("The verification is not complete; see the fields."),
            code=first,
            details={"fields": errors, "codes": codes},
        )
    current = (
        OrganizationVerification.objects.select_for_update()
        .filter(organization=organization, is_current=True)
        .first()
    )
    if current is not None and current.status == VerificationStatus.SUBMITTED:
        raise Conflict(
            _("A verification is already waiting for review."),
            code=AccountsErrorCode.VERIFICATION_PENDING,
        )
    upgrade = submission.kind == VerificationKind.ENTERPRISE and (
        current is not None and current.kind == VerificationKind.INDIVIDUAL
    )  # an individual that became a company: it stays verified as one until this is approved
    if current is not None and current.status == VerificationStatus.APPROVED and not upgrade:
        raise Conflict(
            _("This organisation is already verified."),
            code=AccountsErrorCode.VERIFICATION_ALREADY_APPROVED,
        )
    if current is not None:
        current.is_current = False
        current.save(update_fields=["is_current"])
    number = clean["id_number"]
    verification = OrganizationVerification(
        organization=organization,
        kind=submission.kind,
        name=clean["name"],
        id_number_encrypted=identity_number_encrypt(number),
        id_number_hash=identity_number_hash(number),
        id_number_masked=identity.mask(number),
        credit_code=clean.get("credit_code", ""),
        authorized_person_name=clean.get("authorized_person_name", ""),
        business_licence_type=clean.get("business_licence_type", ""),
        authorization_letter_type=clean.get("authorization_letter_type", ""),
        submitted_by=actor.user,
    )
    if submission.kind == VerificationKind.ENTERPRISE:
        verification.business_licence = submission.business_licence
        if submission.authorization_letter is not None:
            verification.authorization_letter = submission.authorization_letter
    stored.append(verification)
    verification.save()  # writes the documents to the private folder
    audit_record(
        actor=actor,
        action="verification.submit",
        target=verification,
        details={
            "kind": verification.kind,
            "id_number": verification.id_number_masked,
            "credit_code": verification.credit_code,
            "resubmission": current is not None,
        },
    )
    return verification


# --- review (operators) ---------------------------------------------------------------------


def _check_reviewer(actor: Actor) -> None:
    user = actor.user
    if not (actor.operator and user is not None and user.is_active and user.is_staff):
        raise PermissionDenied(_("Only operators review verifications."))
    if not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied(_("You do not have the permission to review verifications."))


def _locked_verification(verification_id: int) -> OrganizationVerification:
    found = (
        OrganizationVerification.objects.filter(pk=verification_id)
        .values_list("organization_id", flat=True)
        .first()
    )
    if found is None:
        raise NotFound(_("No such verification."))
    lock_organization(found)  # the house order: the organisation first
    return (
        OrganizationVerification.objects.select_for_update()
        .select_related("organization")
        .get(pk=verification_id)
    )


def _set_verified_as(organization: Organization, kind: str) -> None:
    organization.verified_as = kind
    organization.save(update_fields=["verified_as"])


AUDIT_ACTIONS = {
    VerificationStatus.APPROVED: "verification.approve",
    VerificationStatus.REJECTED: "verification.reject",
    VerificationStatus.REVOKED: "verification.revoke",
}


def _decide(
    *, actor: Actor, verification_id: int, to: str, allowed_from: str, reason: str, code
) -> OrganizationVerification:
    _check_reviewer(actor)
    reason = (reason or "").strip()
    if to in (VerificationStatus.REJECTED, VerificationStatus.REVOKED) and not reason:
        raise InvalidInput(
            _("Give the reason; the customer sees it."),
            code=AccountsErrorCode.VERIFICATION_REASON_REQUIRED,
            details={"fields": {"reason": _("Give the reason; the customer sees it.")}},
        )
    verification = _locked_verification(verification_id)
    # an approval is revoked even when a newer submission (an upgrade) is the current one,
    # unless that one is approved too (then it is the one to revoke)
    stale = not verification.is_current and (
        to != VerificationStatus.REVOKED
        or OrganizationVerification.objects.filter(
            organization_id=verification.organization_id,
            is_current=True,
            status=VerificationStatus.APPROVED,
        ).exists()
    )
    if verification.status != allowed_from or stale:
        raise Conflict(
            _("This verification is %(status)s.")
            % {"status": verification.get_status_display().lower()},
            code=code,
        )
    organization = verification.organization
    verification.status = to
    verification.reviewed_by = actor.user
    verification.reviewed_at = timezone.now()
    verification.reason = reason
    verification.save(update_fields=["status", "reviewed_by", "reviewed_at", "reason"])
    if to == VerificationStatus.APPROVED:
        _set_verified_as(organization, verification.kind)
    elif to == VerificationStatus.REVOKED:
        _set_verified_as(organization, "")
    # a rejection leaves what an earlier approval gave (an individual asking to be an enterprise)
    operator = Actor.for_operator(actor.user, organization, actor.ip_address)
    audit_record(
        actor=operator,
        action=AUDIT_ACTIONS[to],
        target=verification,
        details={"kind": verification.kind, "reason": reason, "reviewer": actor.user.email},
    )
    _notify(verification)
    return verification


@transaction.atomic(durable=True)
def verification_approve(*, actor: Actor, verification_id: int) -> OrganizationVerification:
    """Approve a submitted verification (operators with ``accounts.review_verification``)."""
    return _decide(
        actor=actor,
        verification_id=verification_id,
        to=VerificationStatus.APPROVED,
        allowed_from=VerificationStatus.SUBMITTED,
        reason="",
        code=AccountsErrorCode.VERIFICATION_NOT_PENDING,
    )


@transaction.atomic(durable=True)
def verification_reject(
    *, actor: Actor, verification_id: int, reason: str
) -> OrganizationVerification:
    """Reject a submitted verification with the reason the customer sees."""
    return _decide(
        actor=actor,
        verification_id=verification_id,
        to=VerificationStatus.REJECTED,
        allowed_from=VerificationStatus.SUBMITTED,
        reason=reason,
        code=AccountsErrorCode.VERIFICATION_NOT_PENDING,
    )


@transaction.atomic(durable=True)
def verification_revoke(
    *, actor: Actor, verification_id: int, reason: str
) -> OrganizationVerification:
    """Revoke an approved verification with a reason: the organisation is unverified again."""
    return _decide(
        actor=actor,
        verification_id=verification_id,
        to=VerificationStatus.REVOKED,
        allowed_from=VerificationStatus.APPROVED,
        reason=reason,
        code=AccountsErrorCode.VERIFICATION_NOT_APPROVED,
    )


def _notify(verification: OrganizationVerification) -> None:
    """Email the organisation's owners the decision (after commit)."""
    owners = Membership.objects.filter(
        organization=verification.organization, role=Role.OWNER, user__is_active=True
    ).select_related("user")
    link = settings.SITE_URL + reverse("accounts:verification")
    subjects = {
        VerificationStatus.APPROVED: _("Your organisation %(name)s is verified"),
        VerificationStatus.REJECTED: _("The verification of %(name)s was not approved"),
        VerificationStatus.REVOKED: _("The verification of %(name)s was revoked"),
    }
    subject = subjects[verification.status] % {"name": verification.organization.name}
    for membership in owners:
        body = render_to_string(
            "accounts/email/verification_decision.txt",
            {"verification": verification, "user": membership.user, "link": link},
        )
        send_later(Email(to=membership.user.email, subject=subject, body=body))


# --- policy ---------------------------------------------------------------------------------


class VerificationRequired(PermissionDenied):
    code = AccountsErrorCode.VERIFICATION_REQUIRED
    default_message = gettext_lazy("This needs a verified organisation.")


def verification_requirement(action: str, region=None) -> frozenset[str]:
    """The verification kinds that allow ``action`` in ``region`` under
    ``VERIFICATION_POLICY`` (empty: none needed). Reads no database."""
    rule = settings.VERIFICATION_POLICY.get(action)
    if not rule:
        return frozenset()
    countries = rule.get("countries")
    if countries is not None:
        country = str(getattr(region, "country", "") or "").upper() if region is not None else ""
        if country not in {c.upper() for c in countries}:
            return frozenset()
    return frozenset(rule.get("kinds") or VERIFIED_KINDS)


_VERIFIED_AS_SQL = "SELECT verified_as FROM accounts_organization WHERE id = %s"


def verification_required(organization: Organization, action: str, region=None) -> None:
    """Refuse with ``verification_required`` (403) when the policy asks for a verification of
    ``organization`` that it does not have for ``action`` (in ``region``). No query when the
    policy asks nothing here; otherwise one primary-key read of the organisation's
    ``verified_as`` (fresh, so a revocation a moment ago counts)."""
    kinds = verification_requirement(action, region)
    if not kinds:
        return
    found = rows(_VERIFIED_AS_SQL, [organization.pk])
    verified_as = found[0][0] if found else ""
    if verified_as in kinds:
        return
    region_code = getattr(region, "code", None)
    if kinds == {VerificationKind.ENTERPRISE}:
        message = _("This needs an enterprise-verified organisation.")
    elif region_code:
        message = _(
            "Instances in %(region)s need a verified organisation (real-name or enterprise "
            "verification)."
        ) % {"region": region_code}
    else:
        message = _("This needs a verified organisation (real-name or enterprise verification).")
    raise VerificationRequired(
        message,
        details={
            "action": action,
            "region": region_code,
            "required": sorted(kinds),
            "verified_as": verified_as or None,
            "verification_url": reverse("accounts:verification"),
        },
    )


def launch_check(*, organization, region=None, **_) -> None:
    """``COMPUTE_LAUNCH_CHECKS`` hook: a launch in a region the policy covers needs a verified
    organisation."""
    verification_required(organization, "instance.launch", region)


def start_check(*, organization, instance=None, **_) -> None:
    """``COMPUTE_START_CHECKS`` hook: so does starting a stopped instance there."""
    verification_required(
        organization, "instance.start", instance.region if instance is not None else None
    )
