"""Error codes of accounts: organisations, members, invitations, keys and sign-in."""

from enum import StrEnum

from portal.errors import error_codes


@error_codes
class AccountsErrorCode(StrEnum):
    ALREADY_INVITED = "already_invited"
    ALREADY_MEMBER = "already_member"
    ADDRESS_INCOMPLETE = "address_incomplete"
    EINVOICE_PROFILE_INCOMPLETE = "einvoice_profile_incomplete"
    ELECTRONIC_ADDRESS_INVALID = "electronic_address_invalid"
    POSTCODE_INVALID = "postcode_invalid"
    BILLING_MODE_INVALID = "billing_mode_invalid"
    CURRENCY_LOCKED = "currency_locked"
    CONFIRMATION_MISMATCH = "confirmation_mismatch"
    COUNTRY_INVALID = "country_invalid"
    CURRENCY_INVALID = "currency_invalid"
    EMAIL_INVALID = "email_invalid"
    EMAIL_TAKEN = "email_taken"
    EXPIRY_IN_PAST = "expiry_in_past"
    INVITATION_CLOSED = "invitation_closed"
    INVITATION_INVALID = "invitation_invalid"
    INVITATION_WRONG_USER = "invitation_wrong_user"
    LANGUAGE_INVALID = "language_invalid"
    LAST_OWNER = "last_owner"
    LOGIN_FAILED = "login_failed"
    LOGIN_THROTTLED = "login_throttled"
    NAME_REQUIRED = "name_required"
    NO_ORGANIZATION = "no_organization"
    ORGANIZATION_NOT_EMPTY = "organization_not_empty"
    PASSWORD_INVALID = "password_invalid"  # nosec B105 # an error code, not a secret
    ROLE_INVALID = "role_invalid"
    ROLE_NOT_GRANTABLE = "role_not_grantable"
    SLUG_TAKEN = "slug_taken"
    SSH_KEY_DUPLICATE = "ssh_key_duplicate"
    SSH_KEY_INVALID = "ssh_key_invalid"
    SSH_KEY_NAME_TAKEN = "ssh_key_name_taken"
    TOKEN_EXPIRED = "token_expired"  # nosec B105 # an error code, not a secret
    TOKEN_INVALID = "token_invalid"  # nosec B105 # an error code, not a secret
    # real-name and enterprise verification
    CREDIT_CODE_INVALID = "credit_code_invalid"
    DOCUMENT_INVALID = "document_invalid"
    DOCUMENT_REQUIRED = "document_required"
    DOCUMENT_TOO_LARGE = "document_too_large"
    IDENTITY_NUMBER_INVALID = "identity_number_invalid"
    VERIFICATION_KIND_INVALID = "verification_kind_invalid"
    VERIFICATION_NOT_PENDING = "verification_not_pending"
    VERIFICATION_NOT_APPROVED = "verification_not_approved"
    VERIFICATION_PENDING = "verification_pending"
    VERIFICATION_ALREADY_APPROVED = "verification_already_approved"
    VERIFICATION_REASON_REQUIRED = "verification_reason_required"
    VERIFICATION_REQUIRED = "verification_required"
