"""Every write about accounts: sign-up, organisations, members, invitations, keys, audit.

Services are keyword-only, run in a transaction, check the actor's role against the
permission matrix, write an audit row, and enqueue email after commit.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django_countries import countries

from portal.accounts import emails
from portal.accounts.errors import AccountsErrorCode
from portal.accounts.locks import lock_organization
from portal.accounts.models import (
    ApiKey,
    AuditEvent,
    BillingMode,
    Currency,
    EInvoiceProfile,
    ElectronicAddressScheme,
    Invitation,
    Membership,
    Organization,
    SshKey,
    User,
)
from portal.accounts.roles import Action, Role, role_can_grant
from portal.accounts.ssh import parse_public_key
from portal.accounts.types import Actor, OrganizationDeleteCheck
from portal.errors import Conflict, ErrorCode, InvalidInput, NotFound, PermissionDenied, Throttled
from portal.sql import Columns, insert, rows

API_KEY_PREFIX = "gpc"
EMAIL_VERIFY_SALT = "portal.accounts.email-verify"


# --- helpers --------------------------------------------------------------------------------


_ROLE_SQL = "SELECT role FROM accounts_membership WHERE organization_id = %s AND user_id = %s"


def authorize(actor: Actor, action: Action, *, lock: bool = False) -> Actor:
    """The actor with its role read again now (under the organisation's row lock if ``lock``).

    A role read at the start of a request may be stale by the time the transaction runs (a
    concurrent demotion or revocation); services that change members, invitations or keys lock
    the organisation first (the house lock order) and decide on the fresh role.
    """
    if actor.organization is None:
        raise PermissionDenied()
    if lock:
        lock_organization(actor.organization.pk)
    role = actor.role
    if actor.api_key is not None:
        key = ApiKey.objects.filter(pk=actor.api_key.pk).first()
        role = key.role if key is not None and key.status == "active" else None
    elif actor.user is not None and not actor.operator:
        found = rows(_ROLE_SQL, [actor.organization.pk, actor.user.pk])
        role = found[0][0] if found else None
    fresh = replace(actor, role=role)
    if not fresh.can(action):
        raise PermissionDenied()
    return fresh


def _revoke_grants_beyond(*, actor: Actor, user: User, role: str | None) -> None:
    """Revoke the API keys and open invitations ``user`` made in the actor's organisation that
    carry a role ``role`` could not grant (all of them when ``role`` is None: they left)."""
    now = timezone.now()
    keys = ApiKey.objects.select_for_update().filter(
        organization=actor.organization, created_by=user, revoked_at__isnull=True
    )
    for key in keys:
        if role is None or not role_can_grant(role, key.role):
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="api_key.revoke",
                target=key,
                details={"reason": "creator_role_changed"},
            )
    invitations = Invitation.objects.select_for_update().filter(
        organization=actor.organization,
        invited_by=user,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
    )
    for invitation in invitations:
        if role is None or not role_can_grant(role, invitation.role):
            invitation.revoked_at = now
            invitation.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="invitation.revoke",
                target=invitation,
                details={"reason": "inviter_role_changed"},
            )


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


MAX_EMAIL_LENGTH = 254


def _clean_email(email: str) -> str:
    email = (email or "").strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidInput(
            _("An email address has at most %(count)s characters.") % {"count": MAX_EMAIL_LENGTH},
            code=AccountsErrorCode.EMAIL_INVALID,
        )
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(
            _("Enter a valid email address."), code=AccountsErrorCode.EMAIL_INVALID
        ) from None
    return email


def _absolute(path: str) -> str:
    return f"{settings.SITE_URL}{path}"


def audit_record(
    *,
    actor: Actor,
    action: str,
    target: Any = None,
    organization: Organization | None = None,
    details: dict | None = None,
) -> AuditEvent:
    """Append one audit row. Called by every state-changing service, inside its transaction."""
    event = AuditEvent(
        organization=organization if organization is not None else actor.organization,
        actor_user=actor.user,
        actor_api_key=actor.api_key,
        actor_label=actor.label,
        action=action,
        target_type=type(target).__name__ if target is not None else "",
        target_id=str(getattr(target, "pk", "") or ""),
        target_label=str(target)[:200] if target is not None else "",
        ip_address=actor.ip_address,
        details=details or {},
    )
    insert(event)  # plain SQL: every state-changing service appends one
    return event


# --- users ------------------------------------------------------------------------------------


def _create_user(**fields) -> User:
    """Create a user; a concurrent sign-up with the same email is a conflict, not a 500."""
    try:
        with transaction.atomic():
            return User.objects.create_user(**fields)
    except IntegrityError:
        raise Conflict(
            _("An account with this email already exists. Log in instead."),
            code=AccountsErrorCode.EMAIL_TAKEN,
        ) from None


@transaction.atomic(durable=True)
def user_signup(
    *, email: str, password: str, full_name: str = "", ip_address: str | None = None
) -> User:
    email = _clean_email(email)
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            _("An account with this email already exists. Log in instead."),
            code=AccountsErrorCode.EMAIL_TAKEN,
        )
    candidate = User(email=email, full_name=full_name.strip())
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise InvalidInput(
            " ".join(exc.messages), code=AccountsErrorCode.PASSWORD_INVALID
        ) from None
    user = _create_user(email=email, password=password, full_name=full_name.strip())
    actor = Actor(user=user, organization=None, role=None, ip_address=ip_address)
    audit_record(actor=actor, action="user.signup", target=user)
    user_send_verification(user=user)
    return user


def user_send_verification(*, user: User) -> None:
    token = signing.dumps({"user": user.pk, "email": user.email}, salt=EMAIL_VERIFY_SALT)
    link = _absolute(reverse("accounts:verify_email", args=[token]))
    emails.send_later(emails.verification_email(user=user, link=link))


@transaction.atomic(durable=True)
def user_verify_email(*, token: str) -> User:
    try:
        data = signing.loads(
            token, salt=EMAIL_VERIFY_SALT, max_age=settings.EMAIL_VERIFICATION_MAX_AGE_SECONDS
        )
    except signing.SignatureExpired:
        raise InvalidInput(
            _("This verification link has expired. Ask for a new one."),
            code=AccountsErrorCode.TOKEN_EXPIRED,
        ) from None
    except signing.BadSignature:
        raise InvalidInput(
            _("This verification link is not valid."), code=AccountsErrorCode.TOKEN_INVALID
        ) from None
    user = User.objects.select_for_update().filter(pk=data["user"], email=data["email"]).first()
    if user is None:
        raise InvalidInput(
            _("This verification link is not valid."), code=AccountsErrorCode.TOKEN_INVALID
        )
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
        audit_record(
            actor=Actor(user=user, organization=None, role=None),
            action="user.verify_email",
            target=user,
        )
    return user


def _throttle_key(email: str, ip_address: str | None) -> str:
    digest = hashlib.sha256(f"{email.lower()}|{ip_address}".encode()).hexdigest()
    return f"login-failures:{digest}"


def user_login(*, request: HttpRequest, email: str, password: str) -> User:
    """Check credentials with a throttle of failed attempts per (email, IP)."""
    from portal.accounts.middleware import client_ip

    key = _throttle_key(email or "", client_ip(request))
    if cache.get(key, 0) >= settings.LOGIN_THROTTLE_ATTEMPTS:
        minutes = settings.LOGIN_THROTTLE_WINDOW_SECONDS // 60
        raise Throttled(
            _(
                "Too many failed log-in attempts. Try again in %(minutes)s minutes or reset "
                "your password."
            )
            % {"minutes": minutes},
            code=AccountsErrorCode.LOGIN_THROTTLED,
        )
    user = authenticate(request, username=(email or "").strip().lower(), password=password)
    if user is None:
        # add-then-incr is atomic in every cache backend, so parallel guesses all count.
        cache.add(key, 0, timeout=settings.LOGIN_THROTTLE_WINDOW_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=settings.LOGIN_THROTTLE_WINDOW_SECONDS)
        raise InvalidInput(
            _("Email or password is not correct."), code=AccountsErrorCode.LOGIN_FAILED
        )
    cache.delete(key)
    return user


# --- organisations ----------------------------------------------------------------------------


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    slug, n = base, 2
    while Organization.objects.filter(slug=slug).exists():
        slug = f"{base}-{n}"
        n += 1
    return slug


def _clean_org_fields(fields: dict) -> dict:
    cleaned = dict(fields)
    if "name" in cleaned:
        cleaned["name"] = (cleaned["name"] or "").strip()
        if not cleaned["name"]:
            raise InvalidInput(
                _("Give the organisation a name."), code=AccountsErrorCode.NAME_REQUIRED
            )
    if "billing_email" in cleaned:
        cleaned["billing_email"] = _clean_email(cleaned["billing_email"])
    if "country" in cleaned:
        country = str(cleaned["country"] or "").strip().upper()
        if len(country) != 2 or countries.alpha2(country) != country:
            raise InvalidInput(
                _("Country must be a two-letter ISO code such as US, DE or CN."),
                code=AccountsErrorCode.COUNTRY_INVALID,
            )
        cleaned["country"] = country
    if "currency" in cleaned and cleaned["currency"] not in Currency.values:
        raise InvalidInput(
            _("Currency must be one of %(choices)s.") % {"choices": ", ".join(Currency.values)},
            code=AccountsErrorCode.CURRENCY_INVALID,
        )
    if "billing_mode" in cleaned and cleaned["billing_mode"] not in BillingMode.values:
        raise InvalidInput(
            _("Billing mode must be one of %(choices)s.")
            % {"choices": ", ".join(BillingMode.values)},
            code=AccountsErrorCode.BILLING_MODE_INVALID,
        )
    if "tax_id" in cleaned:
        cleaned["tax_id"] = (cleaned["tax_id"] or "").strip()
    for key in BILLING_TEXT_FIELDS:
        if key in cleaned:
            cleaned[key] = " ".join(str(cleaned[key] or "").split())  # one line each
    if "electronic_address_scheme" in cleaned:
        cleaned["electronic_address_scheme"] = str(cleaned["electronic_address_scheme"] or "")
        if cleaned["electronic_address_scheme"] not in ["", *ElectronicAddressScheme.values]:
            raise InvalidInput(
                _("Choose the electronic address's scheme from the list."),
                code=AccountsErrorCode.ELECTRONIC_ADDRESS_INVALID,
            )
    if "einvoice_profile" in cleaned and cleaned["einvoice_profile"] not in EInvoiceProfile.values:
        raise InvalidInput(
            _("The e-invoice profile must be one of %(choices)s.")
            % {"choices": ", ".join(EInvoiceProfile.values)},
            code=AccountsErrorCode.EINVOICE_PROFILE_INCOMPLETE,
        )
    if cleaned.get("postcode") and not POSTCODE.match(cleaned["postcode"]):
        raise InvalidInput(
            _("A postcode has 2 to 12 letters, digits, spaces or hyphens."),
            code=AccountsErrorCode.POSTCODE_INVALID,
        )
    return cleaned


# The buyer's postal address, reference and electronic address: free text on one line.
BILLING_TEXT_FIELDS = (
    "street",
    "address_line2",
    "postcode",
    "city",
    "buyer_reference",
    "electronic_address",
)
POSTCODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{0,10}[A-Za-z0-9]$")
# what an electronic address of a scheme looks like (the others: any one-line text)
ELECTRONIC_ADDRESS_FORMS = {
    ElectronicAddressScheme.GLN: re.compile(r"^\d{13}$"),
    ElectronicAddressScheme.DE_VAT: re.compile(r"^DE\d{9}$"),
    ElectronicAddressScheme.LEITWEG_ID: re.compile(r"^\d{2,12}(-[0-9A-Z]{1,30})?-\d{2}$"),
}


def organization_billing_details_check(values: dict) -> None:
    """Raises ``InvalidInput`` for billing details that do not hold together (also run by the
    organisation admin's form). The organisation's address and electronic address as a whole (after an update):
    an address has at least its street and city; an electronic address has its scheme and
    the form the scheme gives it."""
    if any(values.get(k) for k in ("street", "address_line2", "postcode", "city")) and not (
        values.get("street") and values.get("city")
    ):
        raise InvalidInput(
            _("A postal address needs at least the street and the city."),
            code=AccountsErrorCode.ADDRESS_INCOMPLETE,
        )
    address, scheme = (
        values.get("electronic_address", ""),
        values.get("electronic_address_scheme", ""),
    )
    if bool(address) != bool(scheme):
        raise InvalidInput(
            _("Give the electronic address together with its scheme, or neither."),
            code=AccountsErrorCode.ELECTRONIC_ADDRESS_INVALID,
        )
    if scheme == ElectronicAddressScheme.EMAIL:
        try:
            validate_email(address)
        except ValidationError:
            raise InvalidInput(
                _("An electronic address of the email scheme must be an email address."),
                code=AccountsErrorCode.ELECTRONIC_ADDRESS_INVALID,
            ) from None
    form = ELECTRONIC_ADDRESS_FORMS.get(scheme)
    if form and not form.match(address):
        raise InvalidInput(
            _("%(address)s is not a valid %(scheme)s.")
            % {"address": address, "scheme": ElectronicAddressScheme(scheme).label},
            code=AccountsErrorCode.ELECTRONIC_ADDRESS_INVALID,
        )
    profile = values.get("einvoice_profile") or EInvoiceProfile.EN16931
    if profile == EInvoiceProfile.PEPPOL_BIS3 and scheme in ("", ElectronicAddressScheme.EMAIL):
        raise InvalidInput(
            _(
                "PEPPOL BIS Billing 3.0 delivers to a Peppol participant: give an e-invoice "
                "address with its scheme (an email address is not one)."
            ),
            code=AccountsErrorCode.EINVOICE_PROFILE_INCOMPLETE,
        )
    if profile == EInvoiceProfile.XRECHNUNG3:
        missing = [
            str(Organization._meta.get_field(key).verbose_name)
            for key in ("street", "postcode", "city", "buyer_reference", "electronic_address")
            if not values.get(key)
        ]
        if missing:
            raise InvalidInput(
                _("XRechnung 3.0 needs these billing details too: %(missing)s.")
                % {"missing": ", ".join(missing)},
                code=AccountsErrorCode.EINVOICE_PROFILE_INCOMPLETE,
                details={"missing": missing},
            )


@transaction.atomic  # the demo data creates its organisation inside its own transaction
def organization_create(
    *,
    user: User,
    name: str,
    billing_email: str,
    country: str,
    currency: str = Currency.USD,
    billing_mode: str = BillingMode.PREPAID,
    tax_id: str = "",
    slug: str | None = None,
    ip_address: str | None = None,
) -> Organization:
    fields = _clean_org_fields(
        {
            "name": name,
            "billing_email": billing_email,
            "country": country,
            "currency": currency,
            "billing_mode": billing_mode,
            "tax_id": tax_id,
        }
    )
    if slug:
        slug = slugify(slug)
        if Organization.objects.filter(slug=slug).exists():
            raise Conflict(
                _("The slug '%(slug)s' is taken.") % {"slug": slug},
                code=AccountsErrorCode.SLUG_TAKEN,
            )
    for attempt in range(5):
        try:
            with transaction.atomic():
                org = Organization.objects.create(
                    slug=slug or _unique_slug(fields["name"]), **fields
                )
            break
        except IntegrityError:
            if slug or attempt == 4:  # a chosen slug taken meanwhile, or no luck generating one
                raise Conflict(
                    _("This slug was just taken. Try again."), code=AccountsErrorCode.SLUG_TAKEN
                ) from None
    Membership.objects.create(user=user, organization=org, role=Role.OWNER)
    actor = Actor(user=user, organization=org, role=Role.OWNER, ip_address=ip_address)
    audit_record(actor=actor, action="organization.create", target=org)
    return org


# The billing mode is not among them: prepaid unless finance grants credit terms (billing).
ORG_EDITABLE_FIELDS = (
    "name",
    "billing_email",
    "country",
    "tax_id",
    "currency",
    *BILLING_TEXT_FIELDS,
    "electronic_address_scheme",
    "einvoice_profile",
)


def organization_currency_locks(org: Organization) -> dict[str, int]:
    """What fixes the organisation's currency (money moved or resources held in it), from every
    ``ACCOUNTS_CURRENCY_LOCKS``; empty while it may still change."""
    held: dict[str, int] = {}
    for path in settings.ACCOUNTS_CURRENCY_LOCKS:
        check: OrganizationDeleteCheck = import_string(path)
        held.update(check(org))
    return {name: count for name, count in held.items() if count}


@transaction.atomic(durable=True)
def organization_update(*, actor: Actor, **fields: Any) -> Organization:
    actor = authorize(actor, Action.ORG_UPDATE, lock=True)
    unknown = set(fields) - set(ORG_EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput(
            _("Unknown fields: %(fields)s.") % {"fields": ", ".join(sorted(unknown))},
            code=ErrorCode.INVALID,
        )
    cleaned = _clean_org_fields(fields)
    org = Organization.objects.select_for_update().get(pk=actor.organization.pk)
    organization_billing_details_check(
        {key: cleaned.get(key, getattr(org, key)) for key in ORG_EDITABLE_FIELDS}
    )
    changed = {k: v for k, v in cleaned.items() if getattr(org, k) != v}
    if "currency" in changed:
        locks = organization_currency_locks(org)
        if locks:
            held = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in locks.items())
            raise Conflict(
                _("The currency stays %(currency)s: this organisation already has %(held)s in it.")
                % {"currency": org.currency, "held": held},
                code=AccountsErrorCode.CURRENCY_LOCKED,
                details={"currency": org.currency, **locks},
            )
    for key, value in changed.items():
        setattr(org, key, value)
    if changed:
        org.save(update_fields=list(changed))
        audit_record(
            actor=actor,
            action="organization.update",
            target=org,
            details={"fields": sorted(changed)},
        )
    return org


def _organization_holdings(org: Organization) -> dict[str, int]:
    """What the organisation still holds, from every ``ACCOUNTS_ORGANIZATION_DELETE_CHECKS``."""
    held: dict[str, int] = {}
    for path in settings.ACCOUNTS_ORGANIZATION_DELETE_CHECKS:
        check: OrganizationDeleteCheck = import_string(path)
        held.update(check(org))
    return held


@transaction.atomic(durable=True)
def organization_delete(*, actor: Actor, confirm_slug: str) -> None:
    actor = authorize(actor, Action.ORG_DELETE, lock=True)
    org = Organization.objects.select_for_update().get(pk=actor.organization.pk)
    if confirm_slug != org.slug:
        raise InvalidInput(
            _("Type the organisation's slug exactly to confirm deletion."),
            code=AccountsErrorCode.CONFIRMATION_MISMATCH,
        )
    held = _organization_holdings(org)
    if any(held.values()):
        raise Conflict(
            _(
                "%(organization)s still has %(instances)s instance(s) and %(volumes)s volume(s). "
                "Terminate the instances and delete the volumes first."
            )
            % {
                "organization": org.name,
                "instances": held.get("instances", 0),
                "volumes": held.get("volumes", 0),
            },
            code=AccountsErrorCode.ORGANIZATION_NOT_EMPTY,
            details=held,
        )
    # Closed, not erased: its history (instances, usage, invoices) stays for the books; its
    # people, keys and invitations go now.
    now = timezone.now()
    audit_record(actor=actor, action="organization.delete", target=org, details={"slug": org.slug})
    Membership.objects.filter(organization=org).delete()
    Invitation.objects.filter(
        organization=org, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=now)
    ApiKey.objects.filter(organization=org, revoked_at__isnull=True).update(revoked_at=now)
    SshKey.objects.filter(organization=org).delete()
    org.deleted_at = now
    org.save(update_fields=["deleted_at"])


# --- members ----------------------------------------------------------------------------------


def _lock_owners(org: Organization) -> list[Membership]:
    return list(
        Membership.objects.select_for_update()
        .filter(organization=org, role=Role.OWNER)
        .order_by("pk")
    )


@transaction.atomic(durable=True)
def membership_change_role(*, actor: Actor, membership_id: int, role: str) -> Membership:
    actor = authorize(actor, Action.MEMBER_CHANGE_ROLE, lock=True)
    if role not in Role.values:
        raise InvalidInput(
            _("Role must be one of %(choices)s.") % {"choices": ", ".join(Role.values)},
            code=AccountsErrorCode.ROLE_INVALID,
        )
    owners = _lock_owners(actor.organization)
    membership = (
        Membership.objects.select_for_update()
        .filter(organization=actor.organization, pk=membership_id)
        .select_related("user")
        .first()
    )
    if membership is None:
        raise NotFound(_("No such member in this organisation."))
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER and len(owners) == 1:
        raise Conflict(
            _("The last owner cannot be demoted. Make someone else an owner first."),
            code=AccountsErrorCode.LAST_OWNER,
        )
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="membership.change_role",
        target=membership,
        details={"user": membership.user.email, "from": previous, "to": role},
    )
    _revoke_grants_beyond(actor=actor, user=membership.user, role=role)
    return membership


@transaction.atomic(durable=True)
def membership_remove(*, actor: Actor, membership_id: int) -> None:
    """Remove a member, or leave the organisation when the membership is the actor's own.

    Their API keys and open invitations in the organisation are revoked with them.
    """
    if actor.organization is None:
        raise PermissionDenied()
    lock_organization(actor.organization.pk)
    owners = _lock_owners(actor.organization)
    membership = (
        Membership.objects.select_for_update()
        .filter(organization=actor.organization, pk=membership_id)
        .select_related("user")
        .first()
    )
    if membership is None:
        raise NotFound(_("No such member in this organisation."))
    leaving = (
        actor.user is not None and actor.api_key is None and membership.user_id == actor.user.pk
    )
    if not leaving:
        actor = authorize(actor, Action.MEMBER_REMOVE)
        if not role_can_grant(actor.role, membership.role):
            raise PermissionDenied(_("Only an owner can remove an owner."))
    if membership.role == Role.OWNER and len(owners) == 1:
        raise Conflict(
            _(
                "The last owner cannot leave. Make someone else an owner or delete the organisation."
            ),
            code=AccountsErrorCode.LAST_OWNER,
        )
    audit_record(
        actor=actor,
        action="membership.leave" if leaving else "membership.remove",
        target=membership,
        details={"user": membership.user.email, "role": membership.role},
    )
    _revoke_grants_beyond(actor=actor, user=membership.user, role=None)
    membership.delete()


# --- invitations ------------------------------------------------------------------------------


def _check_grant(actor: Actor, role: str) -> None:
    if role not in Role.values:
        raise InvalidInput(
            _("Role must be one of %(choices)s.") % {"choices": ", ".join(Role.values)},
            code=AccountsErrorCode.ROLE_INVALID,
        )
    if not role_can_grant(actor.role, role):
        raise PermissionDenied(
            _("Your role (%(role)s) cannot grant the role %(granted)s.")
            % {"role": actor.role, "granted": role},
            code=AccountsErrorCode.ROLE_NOT_GRANTABLE,
        )


def _issue_invitation_token(invitation: Invitation) -> str:
    token = secrets.token_urlsafe(32)
    invitation.token_hash = _hash_secret(token)
    invitation.sent_at = timezone.now()
    invitation.expires_at = invitation.sent_at + timedelta(days=settings.INVITATION_TTL_DAYS)
    return token


def _send_invitation(invitation: Invitation, token: str) -> None:
    link = _absolute(reverse("accounts:invitation_link", args=[token]))
    emails.send_later(emails.invitation_email(invitation=invitation, link=link))


@transaction.atomic(durable=True)
def invitation_create(*, actor: Actor, email: str, role: str) -> Invitation:
    actor = authorize(actor, Action.MEMBER_INVITE, lock=True)
    email = _clean_email(email)
    _check_grant(actor, role)
    org = actor.organization
    if Membership.objects.filter(organization=org, user__email__iexact=email).exists():
        raise Conflict(
            _("%(email)s is already a member of %(organization)s.")
            % {"email": email, "organization": org.name},
            code=AccountsErrorCode.ALREADY_MEMBER,
        )
    # An expired, unaccepted invitation to the same address is replaced by the new one.
    Invitation.objects.filter(
        organization=org,
        email__iexact=email,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__lte=timezone.now(),
    ).update(revoked_at=timezone.now())
    invitation = Invitation(organization=org, email=email, role=role, invited_by=actor.user)
    token = _issue_invitation_token(invitation)
    try:
        with transaction.atomic():
            invitation.save()
    except IntegrityError:
        raise Conflict(
            _("%(email)s already has a pending invitation. Resend it instead.") % {"email": email},
            code=AccountsErrorCode.ALREADY_INVITED,
        ) from None
    audit_record(
        actor=actor,
        action="invitation.create",
        target=invitation,
        details={"email": email, "role": role},
    )
    _send_invitation(invitation, token)
    return invitation


def _open_invitation(actor: Actor, invitation_id: int) -> Invitation:
    invitation = (
        Invitation.objects.select_for_update()
        .filter(organization=actor.organization, pk=invitation_id)
        .first()
    )
    if invitation is None:
        raise NotFound(_("No such invitation in this organisation."))
    if invitation.accepted_at or invitation.revoked_at:
        raise Conflict(
            _("This invitation was already accepted.")
            if invitation.accepted_at
            else _("This invitation was already revoked."),
            code=AccountsErrorCode.INVITATION_CLOSED,
        )
    return invitation


@transaction.atomic(durable=True)
def invitation_resend(*, actor: Actor, invitation_id: int) -> Invitation:
    """Send a fresh link (the old one stops working) with a new expiry."""
    actor = authorize(actor, Action.MEMBER_INVITE, lock=True)
    invitation = _open_invitation(actor, invitation_id)
    _check_grant(actor, invitation.role)
    token = _issue_invitation_token(invitation)
    invitation.save(update_fields=["token_hash", "sent_at", "expires_at"])
    audit_record(actor=actor, action="invitation.resend", target=invitation)
    _send_invitation(invitation, token)
    return invitation


@transaction.atomic(durable=True)
def invitation_revoke(*, actor: Actor, invitation_id: int) -> Invitation:
    actor = authorize(actor, Action.MEMBER_INVITE, lock=True)
    invitation = _open_invitation(actor, invitation_id)
    _check_grant(actor, invitation.role)
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(actor=actor, action="invitation.revoke", target=invitation)
    return invitation


def invitation_for_token(token: str, *, lock: bool = False) -> Invitation:
    """The open invitation a link points to, or ``invitation_invalid``."""
    queryset = Invitation.objects.select_related("organization", "invited_by")
    if lock:
        queryset = queryset.select_for_update(of=("self",))
    invitation = queryset.filter(token_hash=_hash_secret(token or "")).first()
    if invitation is None or invitation.status != "pending":
        status = invitation.status if invitation else "unknown"
        messages = {
            "accepted": "This invitation has already been used.",
            "revoked": "This invitation was revoked. Ask for a new one.",
            "expired": "This invitation has expired. Ask for a new one.",
            "unknown": "This invitation link is not valid.",
        }
        raise InvalidInput(
            messages[status], code=AccountsErrorCode.INVITATION_INVALID, details={"status": status}
        )
    return invitation


@transaction.atomic  # also inside another service's transaction
def invitation_accept(*, token: str, user: User, ip_address: str | None = None) -> Membership:
    invitation = invitation_for_token(token, lock=True)
    if invitation.email.lower() != user.email.lower():
        raise PermissionDenied(
            _("This invitation was sent to %(email)s. Log in with that address to accept it.")
            % {"email": invitation.email},
            code=AccountsErrorCode.INVITATION_WRONG_USER,
        )
    membership, created = Membership.objects.get_or_create(
        user=user, organization=invitation.organization, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    if user.email_verified_at is None:
        # Following the emailed link proves the address.
        user.email_verified_at = timezone.now()
        user.save(update_fields=["email_verified_at"])
    actor = Actor(
        user=user, organization=invitation.organization, role=membership.role, ip_address=ip_address
    )
    audit_record(
        actor=actor,
        action="invitation.accept",
        target=invitation,
        details={"role": membership.role, "already_member": not created},
    )
    return membership


@transaction.atomic(durable=True)
def invitation_accept_as_new_user(
    *, token: str, full_name: str, password: str, ip_address: str | None = None
) -> User:
    invitation = invitation_for_token(token, lock=True)
    if User.objects.filter(email__iexact=invitation.email).exists():
        raise Conflict(
            _("An account with this email already exists. Log in to accept the invitation."),
            code=AccountsErrorCode.EMAIL_TAKEN,
        )
    candidate = User(email=invitation.email, full_name=full_name.strip())
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise InvalidInput(
            " ".join(exc.messages), code=AccountsErrorCode.PASSWORD_INVALID
        ) from None
    user = _create_user(
        email=invitation.email,
        password=password,
        full_name=full_name.strip(),
        email_verified_at=timezone.now(),
    )
    audit_record(
        actor=Actor(user=user, organization=None, role=None, ip_address=ip_address),
        action="user.signup",
        target=user,
        details={"via": "invitation"},
    )
    invitation_accept(token=token, user=user, ip_address=ip_address)
    return user


# --- API keys ---------------------------------------------------------------------------------


@transaction.atomic(durable=True)
def api_key_create(
    *, actor: Actor, name: str, role: str, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is shown once and never stored."""
    actor = authorize(actor, Action.API_KEY_MANAGE, lock=True)
    name = (name or "").strip()
    if not name:
        raise InvalidInput(
            _("Give the key a name, e.g. 'ci-pipeline'."), code=AccountsErrorCode.NAME_REQUIRED
        )
    _check_grant(actor, role)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput(
            _("The expiry must be in the future."), code=AccountsErrorCode.EXPIRY_IN_PAST
        )
    prefix = secrets.token_hex(8)
    secret = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        organization=actor.organization,
        name=name[:80],
        role=role,
        prefix=prefix,
        secret_hash=_hash_secret(secret),
        created_by=actor.user,
        expires_at=expires_at,
    )
    audit_record(actor=actor, action="api_key.create", target=api_key, details={"role": role})
    return api_key, secret


@transaction.atomic(durable=True)
def api_key_revoke(*, actor: Actor, api_key_id: int) -> ApiKey:
    actor = authorize(actor, Action.API_KEY_MANAGE, lock=True)
    api_key = (
        ApiKey.objects.select_for_update()
        .filter(organization=actor.organization, pk=api_key_id)
        .first()
    )
    if api_key is None:
        raise NotFound(_("No such API key in this organisation."))
    if not role_can_grant(actor.role, api_key.role):
        raise PermissionDenied(
            _("Your role (%(role)s) cannot revoke a %(key_role)s key.")
            % {"role": actor.role, "key_role": api_key.role}
        )
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_key.revoke", target=api_key)
    return api_key


LAST_USED_RESOLUTION = timedelta(minutes=1)


_KEY, _KEY_ORGANIZATION, _KEY_CREATOR = (
    Columns(ApiKey, "k"),
    Columns(Organization, "o"),
    Columns(User, "u"),
)
_KEY_SQL = f"""
SELECT {_KEY.sql}, {_KEY_ORGANIZATION.sql}, {_KEY_CREATOR.sql}
FROM accounts_apikey k
JOIN accounts_organization o ON o.id = k.organization_id
LEFT JOIN accounts_user u ON u.id = k.created_by_id
WHERE k.prefix = %s
"""  # noqa: S608  # nosec B608: the column lists come from the models, values are parameters


def _api_key_by_prefix(prefix: str) -> ApiKey | None:
    """The key with its organisation and creator, in one query (plain SQL: every API call
    reads it)."""
    found = rows(
        _KEY_SQL, [prefix], [*_KEY.fields, *_KEY_ORGANIZATION.fields, *_KEY_CREATOR.fields]
    )
    if not found:
        return None
    api_key = _KEY.instance(found[0], 0)
    api_key.organization = _KEY_ORGANIZATION.instance(found[0], len(_KEY))
    api_key.created_by = _KEY_CREATOR.instance(found[0], len(_KEY) + len(_KEY_ORGANIZATION))
    return api_key


def api_key_authenticate(secret: str) -> ApiKey | None:
    """The active key a bearer secret belongs to, or None. Records when it was last used."""
    parts = (secret or "").split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX:
        return None
    api_key = _api_key_by_prefix(parts[1])
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, _hash_secret(secret)):
        return None
    if api_key.status != "active":
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


# --- SSH keys ---------------------------------------------------------------------------------


@transaction.atomic  # also inside another service's transaction
def ssh_key_create(*, actor: Actor, public_key: str, name: str = "") -> SshKey:
    actor = authorize(actor, Action.SSH_KEY_MANAGE)
    parsed = parse_public_key(public_key)
    org = actor.organization
    name = (name or "").strip()[:80]
    if not name:
        # Named after its comment; a second key with the same comment gets a number.
        base = (parsed.comment or parsed.fingerprint[7:19])[:70]
        taken = set(
            SshKey.objects.filter(organization=org, name__startswith=base).values_list(
                "name", flat=True
            )
        )
        name = next(
            n
            for n in [base, *(f"{base} ({i})" for i in range(2, len(taken) + 3))]
            if n not in taken
        )
    duplicate = SshKey.objects.filter(organization=org, fingerprint=parsed.fingerprint).first()
    if duplicate:
        raise Conflict(
            _("This key is already added as '%(name)s'.") % {"name": duplicate.name},
            code=AccountsErrorCode.SSH_KEY_DUPLICATE,
            details={"fingerprint": parsed.fingerprint},
        )
    if SshKey.objects.filter(organization=org, name=name).exists():
        raise Conflict(
            _("A key named '%(name)s' already exists.") % {"name": name},
            code=AccountsErrorCode.SSH_KEY_NAME_TAKEN,
        )
    try:
        with transaction.atomic():
            ssh_key = SshKey.objects.create(
                organization=org,
                name=name,
                key_type=parsed.key_type,
                bits=parsed.bits,
                public_key=parsed.normalized,
                fingerprint=parsed.fingerprint,
                created_by=actor.user,
            )
    except IntegrityError:
        raise Conflict(
            _("This key was just added by someone else."), code=AccountsErrorCode.SSH_KEY_DUPLICATE
        ) from None
    audit_record(
        actor=actor,
        action="ssh_key.create",
        target=ssh_key,
        details={"fingerprint": parsed.fingerprint},
    )
    return ssh_key


@transaction.atomic(durable=True)
def ssh_key_delete(*, actor: Actor, ssh_key_id: int) -> None:
    actor = authorize(actor, Action.SSH_KEY_MANAGE)
    ssh_key = SshKey.objects.filter(organization=actor.organization, pk=ssh_key_id).first()
    if ssh_key is None:
        raise NotFound(_("No such SSH key in this organisation."))
    audit_record(
        actor=actor,
        action="ssh_key.delete",
        target=ssh_key,
        details={"fingerprint": ssh_key.fingerprint},
    )
    ssh_key.delete()


@transaction.atomic(durable=True)
def user_update_profile(*, user: User, full_name: str, ip_address: str | None = None) -> User:
    full_name = (full_name or "").strip()[:150]
    if user.full_name != full_name:
        user.full_name = full_name
        user.save(update_fields=["full_name"])
        audit_record(
            actor=Actor(user=user, organization=None, role=None, ip_address=ip_address),
            action="user.update",
            target=user,
        )
    return user


def user_set_language(*, user: User, language: str) -> User:
    """Keep the language the portal and its emails speak to ``user`` (a code of
    ``settings.LANGUAGES``, or empty to follow the browser)."""
    if language and language not in dict(settings.LANGUAGES):
        raise InvalidInput(
            _("%(language)s is not a language of the portal.") % {"language": language},
            code=AccountsErrorCode.LANGUAGE_INVALID,
        )
    if user.language != language:
        user.language = language
        user.save(update_fields=["language"])
    return user


@transaction.atomic(durable=True)
def user_password_changed(*, user: User, via: str, ip_address: str | None = None) -> None:
    """Record a password change (from the account page or a reset link)."""
    audit_record(
        actor=Actor(user=user, organization=None, role=None, ip_address=ip_address),
        action="user.password_change",
        target=user,
        details={"via": via},
    )
