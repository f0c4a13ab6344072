"""Template filters for amounts."""

from decimal import Decimal, InvalidOperation

from django import template

from portal.money import amount_text, format_unit_price

register = template.Library()


@register.filter
def amount(value, currency) -> str:
    """An amount rounded by the money rule to the currency's minor unit, as the pages show a
    balance or a total: ``12.5|amount:"USD"`` -> ``12.50``; empty stays empty."""
    if value is None or value == "":
        return ""
    return amount_text(Decimal(value), currency)


@register.filter
def unit_price(value) -> str:
    """A unit price as stored (up to six decimals) without trailing zeros, never fewer than two
    decimals: ``3.790000`` → ``3.79``, ``0.000250`` → ``0.00025``, ``4`` → ``4.00``."""
    if value is None or value == "":
        return ""
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return str(value)
    return format_unit_price(number)


@register.filter
def quantity(line) -> str:
    """An invoice line's quantity with its unit, exactly as the PDF prints it: ``40 hours``,
    ``20.819635 GB-months``, ``1 hour``."""
    from billing.invoicing.documents import quantity as document_quantity

    return document_quantity(line.quantity, line.unit)


@register.filter
def percent(rate) -> str:
    """A tax rate as the PDF prints it: ``0.0750`` → ``7.5``, ``0.19`` → ``19``."""
    from billing.invoicing.documents import percent as document_percent

    return document_percent(rate) if rate not in (None, "") else ""
