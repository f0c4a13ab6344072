"""Money: the currencies, reading amounts people type, the rounding rule, rating precision,
minor units, and how amounts and unit prices are written.

Every app may import this module (it imports nothing of theirs), so catalog, metering and
billing round and write money the same way.

**The rounding rule** (``money_round``, the only place money is rounded): an amount is rounded
to its currency's minor unit (cents, fen: ``MINOR_UNITS``) half-up, ties away from zero
(``0.005`` -> ``0.01``, ``-0.005`` -> ``-0.01``), once: an invoice line's full-precision sum is
rounded once to give its amount, the tax once; sums of rounded amounts are exact and never
rounded again. Figures shown or exported from full-precision values (a balance, a usage cost)
are rounded by the same rule when they are written.

**Rating precision**: usage is rated at full precision and carried at ``RATING_PLACES`` decimal
places (the ledger's precision, far below a minor unit); ``at_rating_precision`` cuts a rated
figure there, as Decimal arithmetic itself rounds (half-even).
"""

from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    InvalidOperation,
)

from django.db import models
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from portal.errors import ErrorCode, InvalidInput

# --- currencies --------------------------------------------------------------------------------


class Currency(models.TextChoices):
    """The currencies the portal prices and bills in."""

    USD = "USD", gettext_lazy("US dollar")
    CNY = "CNY", gettext_lazy("Chinese yuan")


# ISO 4217 exponent of each currency: decimal places of its minor unit (cent, fen).
MINOR_UNITS: dict[str, int] = {Currency.USD.value: 2, Currency.CNY.value: 2}

RATING_PLACES = 12  # full-precision costs and ledger amounts (1e-12)
DETAIL_PLACES = 4  # full-precision figures in usage detail rows (far below a cent, never billed)


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit: ``USD`` -> 2."""
    return MINOR_UNITS[str(currency).upper()]


# --- rounding ----------------------------------------------------------------------------------


def round_half_up(value: Decimal, places: int) -> Decimal:
    """``value`` to ``places`` decimals, half-up (ties away from zero)."""
    return Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def money_round(amount: Decimal, currency: str) -> Decimal:
    """THE rounding rule for money: to the currency's minor unit, half-up, once (see the
    module's docstring)."""
    return round_half_up(amount, minor_units(currency))


def money_round_up(amount: Decimal, currency: str) -> Decimal:
    """Up to the next minor unit (what must be paid at least to cover ``amount``): ``4.001`` ->
    ``4.01``. Not a rounding of money owed: a bound asked of a customer (a top-up to make)."""
    return Decimal(amount).quantize(
        Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_CEILING
    )


def at_rating_precision(amount: Decimal) -> Decimal:
    """A full-precision (rated) figure cut to ``RATING_PLACES`` decimals."""
    return Decimal(amount).quantize(Decimal(1).scaleb(-RATING_PLACES), rounding=ROUND_HALF_EVEN)


# --- minor units -------------------------------------------------------------------------------


def to_minor(amount: Decimal, currency: str) -> int:
    """Decimal major units to the integer minor units providers use (exact, or refused)."""
    scaled = Decimal(amount).scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidInput(
            _("%(amount)s %(currency)s has more decimal places than the currency.")
            % {"amount": amount, "currency": currency},
            code=ErrorCode.AMOUNT_INVALID,
        )
    return int(scaled)


def from_minor(value: int, currency: str) -> Decimal:
    """Integer minor units to Decimal major units: ``(1999, "USD")`` -> ``19.99``."""
    return Decimal(int(value)).scaleb(-minor_units(currency))


# --- reading input -----------------------------------------------------------------------------


MAX_AMOUNT = Decimal(10) ** 15  # what any money column holds with room to spare


def parse_amount(
    value, currency: str, *, field: str = "amount", allow_zero: bool = False
) -> Decimal:
    """A customer-entered amount in major units: a positive number with at most the currency's
    decimal places, returned with exactly that many. Refused with ``amount_invalid`` (the
    sentence also under ``details[field]``)."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, AttributeError):
        message = _("Enter an amount such as 50 or 49.90.")
        raise InvalidInput(
            message, code=ErrorCode.AMOUNT_INVALID, details={field: message}
        ) from None
    places = minor_units(currency)
    if amount.is_finite() and abs(amount) >= MAX_AMOUNT:
        message = _("Enter an amount below %(limit)s.") % {"limit": f"{MAX_AMOUNT:,.0f}"}
        raise InvalidInput(message, code=ErrorCode.AMOUNT_INVALID, details={field: message})
    if not amount.is_finite() or amount.as_tuple().exponent < -places:
        message = _("Use at most %(places)s decimal places.") % {"places": places}
        raise InvalidInput(
            message,
            code=ErrorCode.AMOUNT_INVALID,
            details={field: message},
        )
    if amount < 0 or (amount == 0 and not allow_zero):
        message = _("The amount must be positive.")
        raise InvalidInput(
            message,
            code=ErrorCode.AMOUNT_INVALID,
            details={field: message},
        )
    return amount.quantize(Decimal(1).scaleb(-places))


# --- writing -----------------------------------------------------------------------------------

MINUS = "\u2212"  # the minus sign documents print (not a hyphen)


def decimal_text(
    value: Decimal, *, min_places: int = 0, grouping: bool = False, minus: str = "-"
) -> str:
    """A decimal as written, without trailing zeros and never with an exponent, with at least
    ``min_places`` decimals: ``1.500000`` -> ``1.5``; with ``min_places=2``, ``4`` -> ``4.00``;
    ``grouping`` puts commas between thousands."""
    value = Decimal(value)
    # without trailing zeros, and never rounded: the context is as precise as the value
    value = value.normalize(Context(prec=max(len(value.as_tuple().digits), 1)))
    exponent = value.as_tuple().exponent
    places = max(min_places, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
    spec = f"{',' if grouping else ''}.{places}f"
    if minus == "-":
        return f"{value:{spec}}"
    return f"{minus}{abs(value):{spec}}" if value < 0 else f"{value:{spec}}"


def amount_text(value: Decimal | None, currency: str) -> str:
    """An amount for machines (CSV, e-invoice XML, API messages): rounded by the rule, exactly
    the currency's decimals, no grouping, never ``-0.00``: ``1234.5`` -> ``1234.50``; ``None``
    is zero."""
    rounded = money_round(Decimal(value or 0), currency)
    return f"{rounded if rounded else abs(rounded):f}"


def format_amount(value: Decimal | None, currency: str) -> str:
    """An amount for people (pages, PDFs): rounded by the rule, thousands grouped, a real minus
    sign: ``-1234.5`` -> ``\u22121,234.50``; ``None`` -> ``""``."""
    if value is None:
        return ""
    places = minor_units(currency)
    rounded = money_round(value, currency)
    text = f"{abs(rounded):,.{places}f}"
    return f"{MINUS}{text}" if rounded < 0 else text


# Currencies whose sign is how their buyers read them; the others keep their ISO code after
# the figure (``1,234.50 USD``), which reads the same in every language.
CURRENCY_SIGNS = {"CNY": "\u00a5"}


def with_currency(text: str, currency: str) -> str:
    """A written amount with its currency, for pages and messages in any language:
    ``("1,234.50", "CNY")`` -> ``¥1,234.50``, ``("\u221212.00", "CNY")`` -> ``\u2212¥12.00``,
    ``("1,234.50", "USD")`` -> ``1,234.50 USD``; empty stays empty."""
    if not text:
        return ""
    sign = CURRENCY_SIGNS.get(currency)
    if sign is None:
        return f"{text} {currency}" if currency else text
    if text[0] in (MINUS, "-"):
        return f"{text[0]}{sign}{text[1:]}"
    return f"{sign}{text}"


def detail_text(value: Decimal) -> str:
    """A full-precision figure written for a usage detail row, half-up to ``DETAIL_PLACES``:
    ``0.00109999`` -> ``0.0011``. A display of rated usage, not an amount: amounts are rounded
    by ``money_round`` only."""
    rounded = round_half_up(Decimal(value), DETAIL_PLACES)
    return f"{rounded if rounded else abs(rounded):f}"


def format_unit_price(
    value: Decimal, currency: str | None = None, *, grouping: bool = False, minus: str = "-"
) -> str:
    """A unit price as stored (prices have up to six decimals, rated unit prices more), without
    trailing zeros, never fewer decimals than the currency's minor unit: ``3.790000`` -> ``3.79``,
    ``0.000250`` -> ``0.00025``, ``4`` -> ``4.00``. Not rounded: a unit price is not an amount.
    Documents group thousands and print a real minus sign (``grouping=True, minus=MINUS``)."""
    places = minor_units(currency) if currency else max(MINOR_UNITS.values())
    return decimal_text(value, min_places=places, grouping=grouping, minus=minus)
