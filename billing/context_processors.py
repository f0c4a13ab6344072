from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject


def billing_banner(request: HttpRequest) -> dict:
    """``billing_banner``: the spend notice for the current organisation (looked up only when a
    template shows it)."""
    organization = getattr(request, "organization", None)
    if organization is None:
        return {}

    def lookup():
        from billing.spend.services import banner

        return banner(organization) or ""

    return {"billing_banner": SimpleLazyObject(lookup)}
