from django.conf import settings
from django.core.checks import Error, Tags, register

DEVELOPMENT_BACKENDS = (
    "console.EmailBackend",
    "ConsoleEmailBackend",
    "locmem.EmailBackend",
    "dummy.EmailBackend",
)


@register(Tags.security, deploy=True)
def email_backend_delivers(app_configs, **kwargs):
    """In production, invitation and reset links must be delivered, not printed into logs."""
    backend = settings.MAILERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and backend.endswith(DEVELOPMENT_BACKENDS):
        return [
            Error(
                f"EMAIL_BACKEND is {backend}: invitation and password-reset links would be written "
                "to the logs instead of being sent.",
                hint="Set EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST.",
                id="accounts.E001",
            )
        ]
    return []


@register(Tags.security)
def identity_encryption_key_valid(app_configs, **kwargs):
    """Identity numbers are encrypted with ``IDENTITY_ENCRYPTION_KEY``: each comma-separated
    key must be a Fernet key, or no verification could be stored or read."""
    from cryptography.fernet import Fernet

    keys = [key.strip() for key in settings.IDENTITY_ENCRYPTION_KEY.split(",") if key.strip()]
    try:
        if not keys:
            raise ValueError("no key")
        for key in keys:
            Fernet(key.encode())
    except (ValueError, TypeError):
        return [
            Error(
                "IDENTITY_ENCRYPTION_KEY is not a Fernet key (urlsafe base64 of 32 bytes, "
                "several separated by commas).",
                hint='Make one with: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"',
                id="accounts.E002",
            )
        ]
    return []


@register()
def verification_policy_valid(app_configs, **kwargs):
    """Each ``VERIFICATION_POLICY`` rule names known verification kinds and a list of ISO
    country codes (or None: everywhere)."""
    from portal.accounts.models import VerificationKind

    errors = []
    for action, rule in settings.VERIFICATION_POLICY.items():
        kinds = rule.get("kinds") if isinstance(rule, dict) else None
        countries = rule.get("countries") if isinstance(rule, dict) else None
        if (
            not isinstance(kinds, list | tuple)
            or not kinds
            or not set(kinds) <= set(VerificationKind.values)
            or not (
                countries is None
                or (
                    isinstance(countries, list | tuple)
                    and all(isinstance(c, str) and len(c) == 2 for c in countries)
                )
            )
        ):
            errors.append(
                Error(
                    f"VERIFICATION_POLICY[{action!r}] must be "
                    '{"kinds": ["individual" and/or "enterprise"], "countries": ["CN", ...] '
                    "or None}.",
                    id="accounts.E003",
                )
            )
    return errors
