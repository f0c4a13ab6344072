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
