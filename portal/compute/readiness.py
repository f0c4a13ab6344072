"""What a launch needs, shown on the launch form before its button: an SSH key to log in with
and, for a prepaid organisation, credit for the new instance over the reserve window beyond
what is reserved already for what it holds (the same sums billing's launch check makes:
``BILLING_CREDIT_RESERVE_HOURS`` of the type's price against ``credit_reserve``'s available
credit). Billing's reserve is reached through ``COMPUTE_CREDIT_RESERVE`` (a dotted path, as
compute reaches billing's launch checks), so compute does not import billing."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from portal.accounts.types import BillingMode
from portal.money import money_round_up

CREDIT_RESERVE = "billing.spend.services.credit_reserve"


@dataclass(frozen=True)
class LaunchCredit:
    """A prepaid organisation's credit against what one more instance needs."""

    currency: str
    balance: Decimal
    reserved: Decimal  # for what it holds already, over the reserve window
    available: Decimal  # the balance less ``reserved``
    needed: Decimal  # the new instance's price over the reserve window
    shortfall: Decimal  # what to top up at least; zero when the credit covers it
    reserve_hours: Decimal
    top_up_url: str

    @property
    def enough(self) -> bool:
        return self.shortfall <= 0


def _top_up_url() -> str:
    try:
        return reverse("billing:billing")
    except NoReverseMatch:  # pragma: no cover - billing's pages are always installed here
        return ""


def launch_credit(organization, hourly: Decimal | None) -> LaunchCredit | None:
    """The credit check a launch at ``hourly`` would meet, or None when there is none to show
    (no price chosen yet, or an organisation invoiced monthly, whose launches count against its
    credit limit instead)."""
    if hourly is None or organization.billing_mode != BillingMode.PREPAID:
        return None
    path = getattr(settings, "COMPUTE_CREDIT_RESERVE", CREDIT_RESERVE)
    reserve = import_string(path)(organization)
    currency, window = organization.currency, settings.BILLING_CREDIT_RESERVE_HOURS
    needed = hourly * window
    shortfall = Decimal(0)
    if reserve.available < needed:
        shortfall = money_round_up(needed - reserve.available, currency)
    return LaunchCredit(
        currency=currency,
        balance=reserve.balance,
        reserved=reserve.reserved,
        available=reserve.available,
        needed=needed,
        shortfall=shortfall,
        reserve_hours=window,
        top_up_url=_top_up_url(),
    )
