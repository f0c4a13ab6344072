"""Users, organisations, memberships, invitations, API keys, SSH keys and the audit log.

Everything a customer owns belongs to an :class:`Organization`, never to a user.
Writes go through ``portal.accounts.services``.
"""

import os
import secrets
from pathlib import PurePosixPath

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.files.storage import FileSystemStorage
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_countries.fields import CountryField

from portal.accounts.roles import Role
from portal.accounts.types import BillingMode
from portal.money import Currency  # defined with the money rules; importable from here too


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> "User":
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> "User":
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an email address."""

    email = models.EmailField("email address", unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        default=False, help_text=_("Operators and finance staff who may use Django admin.")
    )
    date_joined = models.DateTimeField(default=timezone.now)
    email_verified_at = models.DateTimeField(null=True, blank=True)
    language = models.CharField(
        max_length=10,
        choices=settings.LANGUAGES,
        blank=True,
        help_text=_(
            "The language the portal and its emails speak to this person; "
            "empty follows the browser."
        ),
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def display_name(self) -> str:
        return self.full_name or self.email

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class VerificationKind(models.TextChoices):
    INDIVIDUAL = "individual", _("Individual (real name)")
    ENTERPRISE = "enterprise", _("Enterprise")


class ElectronicAddressScheme(models.TextChoices):
    """Where an e-invoice is delivered to the buyer [BT-49-1]: the codes of the CEF
    Electronic Address Scheme list that customers here use."""

    EMAIL = "EM", _("Email address")
    GLN = "0088", _("GLN (Global Location Number)")
    LEITWEG_ID = "0204", _("Leitweg-ID (German public sector)")
    DE_VAT = "9930", _("German VAT number")
    BE_ENTERPRISE = "0208", _("Belgian enterprise number")
    NL_OIN = "0190", _("Dutch OIN")
    IT_VAT = "0211", _("Italian VAT number")
    NO_ORG = "0192", _("Norwegian organisation number")
    DK_CVR = "0184", _("Danish CVR number")
    FI_OVT = "0216", _("Finnish OVT code")


class EInvoiceProfile(models.TextChoices):
    """The rules an organisation's UBL and CII follow: plain EN 16931, or one of the CIUS its
    e-invoicing system expects (ids and elements in ``billing.finance.einvoice``)."""

    EN16931 = "en16931", _("EN 16931")
    PEPPOL_BIS3 = "peppol_bis3", _("PEPPOL BIS Billing 3.0")
    XRECHNUNG3 = "xrechnung3", _("XRechnung 3.0")


class Organization(models.Model):
    """A customer account: owns instances, keys, credits and invoices.

    Its billing details (name, email, country, tax id, postal address, buyer reference and
    electronic address) are what its invoices and credit notes state about the buyer, frozen
    into each one as it is issued (``billing.invoicing.services.buyer_snapshot``)."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    billing_email = models.EmailField()
    country = CountryField(help_text=_("ISO 3166-1 country; decides tax treatment on invoices."))
    tax_id = models.CharField(max_length=40, blank=True)
    street = models.CharField(_("street and number"), max_length=200, blank=True)
    address_line2 = models.CharField(_("address line 2"), max_length=200, blank=True)
    postcode = models.CharField(_("postcode"), max_length=20, blank=True)
    city = models.CharField(_("city"), max_length=100, blank=True)
    buyer_reference = models.CharField(
        _("buyer reference"),
        max_length=200,
        blank=True,
        help_text=_(
            "Quoted on every invoice for the buyer's routing (BT-10), e.g. a purchase order "
            "or a German public body's Leitweg-ID; empty uses the organisation's slug."
        ),
    )
    electronic_address = models.CharField(
        _("electronic address"),
        max_length=200,
        blank=True,
        help_text=_("Where e-invoices are delivered (BT-49), e.g. a Peppol participant id."),
    )
    electronic_address_scheme = models.CharField(
        _("electronic address scheme"),
        max_length=4,
        blank=True,
        choices=ElectronicAddressScheme.choices,
    )
    einvoice_profile = models.CharField(
        _("e-invoice profile"),
        max_length=12,
        choices=EInvoiceProfile.choices,
        default=EInvoiceProfile.EN16931,
        help_text=_("The rules the UBL and CII e-invoices follow."),
    )
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    billing_mode = models.CharField(
        max_length=10, choices=BillingMode.choices, default=BillingMode.PREPAID
    )
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(
        null=True, blank=True, help_text=_("Closed by its owner; kept for its history.")
    )
    # Kept in step with the current verification by portal.accounts.verification, so a launch
    # reads it with the organisation's row: blank until a verification is approved.
    verified_as = models.CharField(
        _("verified as"), max_length=10, blank=True, choices=VerificationKind.choices, default=""
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(currency__in=Currency.values), name="accounts_org_currency_valid"
            ),
            models.CheckConstraint(
                condition=Q(billing_mode__in=BillingMode.values),
                name="accounts_org_billing_mode_valid",
            ),
            models.CheckConstraint(
                condition=Q(verified_as__in=["", *VerificationKind.values]),
                name="accounts_org_verified_as_valid",
            ),
            models.CheckConstraint(
                condition=Q(electronic_address="", electronic_address_scheme="")
                | (
                    ~Q(electronic_address="")
                    & Q(electronic_address_scheme__in=ElectronicAddressScheme.values)
                ),
                name="accounts_org_electronic_address_has_scheme",
            ),
            models.CheckConstraint(
                condition=Q(einvoice_profile__in=EInvoiceProfile.values),
                name="accounts_org_einvoice_profile_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization__name", "user__email"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "organization"], name="accounts_membership_user_org_unique"
            ),
            models.CheckConstraint(
                condition=Q(role__in=Role.values), name="accounts_membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Invitation(models.Model):
    """An emailed, expiring, single-use invitation to join an organisation."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                "organization",
                Lower("email"),
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="accounts_invitation_one_open_per_email",
            ),
            models.CheckConstraint(
                condition=Q(role__in=Role.values), name="accounts_invitation_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.organization}"

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class ApiKey(models.Model):
    """A secret for the REST API. Only a SHA-256 hash of the secret is stored."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=80)
    role = models.CharField(max_length=10, choices=Role.choices)
    prefix = models.CharField(
        max_length=16, unique=True, help_text=_("Public part, shown in lists.")
    )
    secret_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=Role.values), name="accounts_apikey_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class SshKeyType(models.TextChoices):
    ED25519 = "ssh-ed25519", "Ed25519"
    ECDSA_256 = "ecdsa-sha2-nistp256", "ECDSA P-256"
    ECDSA_384 = "ecdsa-sha2-nistp384", "ECDSA P-384"
    ECDSA_521 = "ecdsa-sha2-nistp521", "ECDSA P-521"
    RSA = "ssh-rsa", "RSA"


class SshKey(models.Model):
    """An SSH public key that instances of the organisation can be launched with."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="ssh_keys"
    )
    name = models.CharField(max_length=80)
    key_type = models.CharField(max_length=24, choices=SshKeyType.choices)
    bits = models.PositiveIntegerField()
    public_key = models.TextField(help_text=_("Normalised: type, base64 body and comment."))
    fingerprint = models.CharField(
        max_length=64, help_text=_("SHA256 fingerprint, as ssh-keygen -l.")
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "fingerprint"],
                name="accounts_sshkey_org_fingerprint_unique",
            ),
            models.UniqueConstraint(
                fields=["organization", "name"], name="accounts_sshkey_org_name_unique"
            ),
            models.CheckConstraint(
                condition=Q(key_type__in=SshKeyType.values), name="accounts_sshkey_type_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class AuditEvent(models.Model):
    """Who did what to which object, when, from where, in which organisation. Append-only."""

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, help_text=_("Who, as it read at the time."))
    action = models.CharField(max_length=60, db_index=True)
    target_type = models.CharField(max_length=60, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="accounts_audit_org_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"


# --- real-name and enterprise verification (实名认证) ---------------------------------------------


class VerificationStatus(models.TextChoices):
    SUBMITTED = "submitted", _("Submitted, pending review")
    APPROVED = "approved", _("Approved")
    REJECTED = "rejected", _("Rejected")
    REVOKED = "revoked", _("Revoked")


class PrivateDocumentStorage(FileSystemStorage):
    """``VERIFICATION_DOCUMENT_DIR``, read when used: outside the static and media folders,
    with no URL; the checking views serve the files."""

    @property
    def base_location(self):
        return str(settings.VERIFICATION_DOCUMENT_DIR)

    @property
    def location(self):
        return os.path.abspath(self.base_location)

    def url(self, name):
        raise ValueError("Verification documents have no URL; a checking view serves them.")


def verification_document_storage() -> FileSystemStorage:
    return PrivateDocumentStorage()


def verification_document_path(instance: "OrganizationVerification", filename: str) -> str:
    """A random name in the organisation's folder: the customer's file name is not kept."""
    suffix = PurePosixPath(filename).suffix.lower()[:8]
    return f"{instance.organization_id}/{secrets.token_hex(16)}{suffix}"


class OrganizationVerification(models.Model):
    """One submission of an organisation's real-name (individual) or enterprise verification.

    Each submission is a new row; the newest is the current one (``is_current``, one per
    organisation) and the others are its history. Identity numbers (the individual's, or the
    enterprise's authorised person's) are stored only encrypted, with a keyed hash to find them
    by and a masked form to show; the Unified Social Credit Code is not personal and is plain.
    Writes go through ``portal.accounts.verification``.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="verifications"
    )
    is_current = models.BooleanField(default=True)
    kind = models.CharField(_("kind"), max_length=10, choices=VerificationKind.choices)
    status = models.CharField(
        _("status"),
        max_length=10,
        choices=VerificationStatus.choices,
        default=VerificationStatus.SUBMITTED,
    )
    name = models.CharField(
        _("name"), max_length=200, help_text=_("The legal name, or the registered company name.")
    )
    id_number_encrypted = models.TextField(
        help_text=_("Fernet token of the identity number (IDENTITY_ENCRYPTION_KEY).")
    )
    id_number_hash = models.CharField(max_length=64, db_index=True)
    id_number_masked = models.CharField(_("identity number"), max_length=24)
    credit_code = models.CharField(_("Unified Social Credit Code"), max_length=18, blank=True)
    authorized_person_name = models.CharField(_("authorised person"), max_length=120, blank=True)
    business_licence = models.FileField(
        _("business licence"),
        storage=verification_document_storage,
        upload_to=verification_document_path,
        blank=True,
    )
    business_licence_type = models.CharField(max_length=40, blank=True)
    authorization_letter = models.FileField(
        _("authorisation letter"),
        storage=verification_document_storage,
        upload_to=verification_document_path,
        blank=True,
    )
    authorization_letter_type = models.CharField(max_length=40, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    submitted_at = models.DateTimeField(_("submitted"), default=timezone.now)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("reviewed by"),
    )
    reviewed_at = models.DateTimeField(_("reviewed"), null=True, blank=True)
    reason = models.TextField(
        _("reason"),
        blank=True,
        help_text=_("Why it was rejected or revoked; the customer sees it."),
    )

    class Meta:
        verbose_name = _("organisation verification")
        verbose_name_plural = _("organisation verifications")
        ordering = ["-submitted_at", "-id"]
        default_permissions = ()  # the review permission below is the only one
        permissions = [("review_verification", "Can review real-name and enterprise verifications")]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(is_current=True),
                name="accounts_verification_one_current",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=VerificationKind.values), name="accounts_verification_kind"
            ),
            models.CheckConstraint(
                condition=Q(status__in=VerificationStatus.values),
                name="accounts_verification_status",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "submitted_at"], name="accounts_verification_queue"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} verification of {self.organization}"
