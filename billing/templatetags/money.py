"""Template filters for amounts."""

from decimal import Decimal, InvalidOperation

from django import template

register = template.Library()

CENT = Decimal("0.01")


@register.filter
def unit_price(value) -> str:
    """A unit price as stored (up to six decimals) without trailing zeros, never fewer than two
    decimals: ``3.790000`` → ``3.79``, ``0.000250`` → ``0.00025``, ``4`` → ``4.00``."""
    if value is None or value == "":
        return ""
    try:
        number = Decimal(value).normalize()
    except (InvalidOperation, TypeError, ValueError):
        return str(value)
    if number.as_tuple().exponent > -2:
        number = number.quantize(CENT)
    return f"{number:f}"
