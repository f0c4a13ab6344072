"""portal.money: the currency table, parsing, the rounding rule, minor units and formatting."""

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from portal import money
from portal.accounts.models import Currency as AccountsCurrency
from portal.errors import InvalidInput

CURRENCIES = st.sampled_from(sorted(money.MINOR_UNITS))
MINOR = st.integers(min_value=-(10**15), max_value=10**15)


def test_currency_table_covers_every_currency():
    assert AccountsCurrency is money.Currency
    assert set(money.MINOR_UNITS) == set(money.Currency.values)
    assert money.minor_units("USD") == 2
    assert money.minor_units("cny") == 2


@given(value=MINOR, currency=CURRENCIES)
def test_minor_units_round_trip(value, currency):
    amount = money.from_minor(value, currency)
    assert money.to_minor(amount, currency) == value
    assert amount == money.money_round(amount, currency)


def test_to_minor_refuses_fractions_of_a_minor_unit():
    assert money.to_minor(Decimal("19.99"), "USD") == 1999
    assert money.from_minor(1999, "USD") == Decimal("19.99")
    with pytest.raises(InvalidInput) as caught:
        money.to_minor(Decimal("0.005"), "USD")
    assert caught.value.code == "amount_invalid"


@pytest.mark.parametrize(
    ("exact", "rounded"),
    [
        ("0.005", "0.01"),
        ("-0.005", "-0.01"),
        ("0.004999999999", "0.00"),
        ("2.675", "2.68"),
        ("2.665", "2.67"),  # half-up, not half-even
        ("1234.565000000001", "1234.57"),
    ],
)
def test_money_round_is_half_up_to_the_minor_unit(exact, rounded):
    assert money.money_round(Decimal(exact), "USD") == Decimal(rounded)
    assert str(money.money_round(Decimal(exact), "CNY")) == rounded


@given(
    minor=st.integers(min_value=-(10**12), max_value=10**12),
    rest=st.integers(min_value=0, max_value=10**10 - 1),
)
def test_money_round_never_moves_more_than_half_a_minor_unit(minor, rest):
    exact = Decimal(minor).scaleb(-2) + Decimal(rest).scaleb(-12)
    rounded = money.money_round(exact, "USD")
    assert abs(rounded - exact) <= Decimal("0.005")
    assert rounded.as_tuple().exponent == -2
    if rest == 5 * 10**7:  # exactly half a cent above: away from zero when positive
        assert rounded > exact or exact < 0


def test_rating_precision_keeps_twelve_places():
    assert money.at_rating_precision(Decimal(7) / Decimal(3)) == Decimal("2.333333333333")
    assert money.RATING_PLACES == 12


@pytest.mark.parametrize(
    ("value", "expected"),
    [("50", Decimal("50.00")), (" 49.9 ", Decimal("49.90")), (Decimal("10.10"), Decimal("10.10"))],
)
def test_parse_amount_accepts_major_units(value, expected):
    amount = money.parse_amount(value, "USD")
    assert amount == expected and str(amount) == str(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "Enter an amount such as 50 or 49.90."),
        (None, "Enter an amount such as 50 or 49.90."),
        ("1.005", "Use at most 2 decimal places."),
        ("NaN", "Use at most 2 decimal places."),
        ("-1", "The amount must be positive."),
        ("0", "The amount must be positive."),
    ],
)
def test_parse_amount_refuses_with_amount_invalid(value, message):
    with pytest.raises(InvalidInput) as caught:
        money.parse_amount(value, "USD", field="limit")
    assert caught.value.code == "amount_invalid"
    assert caught.value.message == message
    assert caught.value.details == {"limit": message}


def test_parse_amount_allows_zero_when_asked():
    assert money.parse_amount("0", "CNY", allow_zero=True) == Decimal("0.00")


@pytest.mark.parametrize(
    ("value", "text", "shown"),
    [
        (Decimal("1234.5"), "1234.50", "1,234.50"),
        (Decimal("-1234.5"), "-1234.50", "\u22121,234.50"),
        (Decimal("0"), "0.00", "0.00"),
        (Decimal("-0.00"), "0.00", "0.00"),
        (Decimal("0.005"), "0.01", "0.01"),
        (Decimal("1000000"), "1000000.00", "1,000,000.00"),
    ],
)
def test_amounts_are_written_rounded_by_the_rule(value, text, shown):
    assert money.amount_text(value, "USD") == text
    assert money.format_amount(value, "USD") == shown


def test_missing_amounts():
    assert money.amount_text(None, "USD") == "0.00"
    assert money.format_amount(None, "USD") == ""


@pytest.mark.parametrize(
    ("value", "plain", "document"),
    [
        ("3.790000", "3.79", "3.79"),
        ("0.000250", "0.00025", "0.00025"),
        ("4", "4.00", "4.00"),
        ("1234.5", "1234.50", "1,234.50"),
        ("2.916666666666", "2.916666666666", "2.916666666666"),
        ("-1.5", "-1.50", "\u22121.50"),
    ],
)
def test_unit_prices_keep_their_decimals(value, plain, document):
    assert money.format_unit_price(Decimal(value)) == plain
    assert money.format_unit_price(Decimal(value), "USD") == plain
    assert (
        money.format_unit_price(Decimal(value), "USD", grouping=True, minus=money.MINUS) == document
    )


@given(st.decimals(allow_nan=False, allow_infinity=False, places=6, max_value=10**8))
@example(Decimal("-123456789012345678901234567.123456"))  # more digits than a default context
def test_unit_price_text_reads_back_as_the_same_number(value):
    text = money.format_unit_price(value)
    assert Decimal(text) == value
    assert "E" not in text and len(text.split(".")[1]) >= 2


def test_decimal_text():
    assert money.decimal_text(Decimal("1.500000")) == "1.5"
    assert money.decimal_text(Decimal("1E+2")) == "100"
    assert money.decimal_text(Decimal("20.819635"), grouping=True) == "20.819635"
    assert money.decimal_text(Decimal("12345.5"), grouping=True) == "12,345.5"
    assert money.decimal_text(Decimal("7.5"), min_places=2) == "7.50"


def test_the_amount_filter_writes_amounts_as_the_pages_did():
    from portal.templatetags.money import amount

    assert amount(Decimal("9.995000000000"), "USD") == "10.00"
    assert amount(Decimal("-5"), "CNY") == "-5.00"
    assert amount(None, "USD") == ""


def test_the_money_filters_round_once_by_the_rule_and_group_for_people():
    from django.template import Context, Template

    page = Template(
        "{% load money %}{{ b|money:c }}|{{ p|amount:c }}|{{ d|detail }}|{{ u|unit_price:c }}"
        "|{{ none|money:c }}"
    )
    text = page.render(
        Context(
            {
                "b": Decimal("-1234.565"),
                "p": Decimal("0.385000"),
                "d": Decimal("0.000049999"),
                "u": Decimal("0.000250"),
                "none": None,
                "c": "USD",
            }
        )
    )
    # half-up, ties away from zero; grouped with a real minus sign; a detail row keeps 4 decimals
    assert text == "\u22121,234.57|0.39|0.0000|0.00025|"
    assert money.detail_text(Decimal("0.00109999")) == "0.0011"
    assert money.detail_text(Decimal("-0.00001")) == "0.0000"
