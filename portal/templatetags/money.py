"""Template filters for money, loaded as ``{% load money %}`` by every app's templates (the
library is registered in ``TEMPLATES`` so it belongs to no app). They only call
``portal.money``: pages round and write amounts as invoices and exports do."""

from decimal import Decimal, InvalidOperation

from django import template

from portal.money import amount_text, detail_text, format_amount, format_unit_price, with_currency

register = template.Library()


def _decimal(value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return None


@register.filter
def amount(value, currency) -> str:
    """An amount rounded by the money rule, the currency's decimals, no grouping, as forms and
    tables of figures show it: ``12.5|amount:"USD"`` -> ``12.50``; empty stays empty."""
    number = _decimal(value)
    return "" if number is None else amount_text(number, currency)


@register.filter
def money(value, currency) -> str:
    """An amount for people, rounded by the money rule, thousands grouped, a real minus sign:
    ``1234.5|money:"USD"`` -> ``1,234.50``; empty stays empty."""
    number = _decimal(value)
    return "" if number is None else format_amount(number, currency)


@register.filter
def money_in(value, currency) -> str:
    """``money`` with its currency, as pages show amounts to people in either language:
    ``1234.5|money_in:"CNY"`` -> ``¥1,234.50``, ``1234.5|money_in:"USD"`` -> ``1,234.50 USD``."""
    return with_currency(money(value, currency), currency)


@register.filter
def amount_in(value, currency) -> str:
    """``amount`` with its currency (no grouping, as a figure in a table or a form reads):
    ``12.5|amount_in:"CNY"`` -> ``¥12.50``."""
    return with_currency(amount(value, currency), currency)


@register.filter
def unit_price_in(value, currency) -> str:
    """``unit_price`` with its currency: ``0.000250|unit_price_in:"CNY"`` -> ``¥0.00025``."""
    return with_currency(unit_price(value, currency), currency)


@register.filter
def unit_price(value, currency=None) -> str:
    """A unit price as stored without trailing zeros, never fewer decimals than the currency's
    minor unit: ``3.790000`` -> ``3.79``, ``0.000250`` -> ``0.00025``, ``4`` -> ``4.00``."""
    number = _decimal(value)
    if number is None:
        return "" if value in (None, "") else str(value)
    return format_unit_price(number, currency or None)


@register.filter
def detail(value) -> str:
    """A full-precision figure in a usage detail row, where an hour of a small instance is far
    below a cent: ``0.00109999`` -> ``0.0011``."""
    number = _decimal(value)
    return "" if number is None else detail_text(number)
