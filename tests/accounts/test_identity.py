"""portal.accounts.identity: resident identity numbers (GB 11643) and Unified Social Credit
Codes (GB 32100) checked as their standards define them."""

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.accounts import identity

TODAY = datetime.date(2026, 12, 3)
BIRTH_DATES = st.dates(min_value=datetime.date(1900, 1, 1), max_value=TODAY)
AREA = st.text(alphabet="0123456789", min_size=6, max_size=6)
SEQUENCE = st.text(alphabet="0123456789", min_size=3, max_size=3)
SYMBOLS = identity.CREDIT_CODE_SYMBOLS
FULL_WIDTH = {ord(c): ord(c) + 0xFEE0 for c in "0123456789X"}


def _resident_id(area: str, born: datetime.date, sequence: str) -> str:
    first_17 = f"{area}{born:%Y%m%d}{sequence}"
    return first_17 + identity.resident_id_check_character(first_17)


def test_the_standards_own_examples_pass():
    assert identity.resident_id_valid("11010519491231002X", today=TODAY)  # GB 11643's example
    assert identity.credit_code_valid("91350100M000100Y43")
    assert identity.resident_id_valid(" 110105-19491231-002x ", today=TODAY)  # as typed
    assert identity.credit_code_valid("91350100m000100y43")


@given(area=AREA, born=BIRTH_DATES, sequence=SEQUENCE, data=st.data())
def test_any_one_wrong_character_of_a_resident_id_is_caught(area, born, sequence, data):
    number = _resident_id(area, born, sequence)
    assert identity.resident_id_valid(number, today=TODAY)
    position = data.draw(st.integers(min_value=0, max_value=17))
    wrong = data.draw(st.sampled_from([c for c in "0123456789X" if c != number[position]]))
    changed = number[:position] + wrong + number[position + 1 :]
    assert not identity.resident_id_valid(changed, today=TODAY)


@given(
    prefix=st.text(alphabet=SYMBOLS, min_size=2, max_size=2),
    area=AREA,
    organization=st.text(alphabet=SYMBOLS, min_size=9, max_size=9),
    data=st.data(),
)
def test_any_one_wrong_character_of_a_credit_code_is_caught(prefix, area, organization, data):
    first_17 = f"{prefix}{area}{organization}"
    code = first_17 + identity.credit_code_check_character(first_17)
    assert identity.credit_code_valid(code)
    position = data.draw(st.integers(min_value=0, max_value=17))
    wrong = data.draw(st.sampled_from([c for c in SYMBOLS if c != code[position]]))
    assert not identity.credit_code_valid(code[:position] + wrong + code[position + 1 :])


@pytest.mark.parametrize(
    "number",
    [
        "",
        "11010519491231002",  # 17 characters
        "11010519491231002XX",  # 19
        "1101051949123100X2",  # X before the end
        "11010519490230002X",  # 30 February, check character recomputed below
        "11010518991231002X",  # born before 1900
        "11010520271231002X",  # born after today
        "11010519491231002X".translate(FULL_WIDTH),  # full-width digits
    ],
)
def test_resident_ids_that_cannot_be(number):
    if len(number) == 18 and number[:17].isascii() and number[:17].isdigit():
        number = number[:17] + identity.resident_id_check_character(
            number[:17]
        )  # only the date is wrong
    assert not identity.resident_id_valid(number, today=TODAY)


@pytest.mark.parametrize(
    ("code", "with_check"),
    [
        ("", False),
        ("91350100M000100Y4", False),  # 17 characters
        ("91350100M000100Y433", False),  # 19
        ("9135010OM000100Y43", False),  # O is not a symbol
        ("91350100I000100Y43", False),  # nor I
        ("913501Z0M000100Y43", False),  # nor Z
        ("9135A100M000100Y4", True),  # a letter in the area code, with its check character
    ],
)
def test_credit_codes_that_cannot_be(code, with_check):
    if with_check:
        code += identity.credit_code_check_character(code)
    assert not identity.credit_code_valid(code)


def test_numbers_are_shown_masked():
    assert identity.mask("11010519491231002X") == "1101**********002X"
    assert identity.mask("91350100M000100Y43") == "9135**********0Y43"
    assert identity.mask("1234567") == "*******"
