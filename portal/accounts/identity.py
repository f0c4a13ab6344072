"""The numbers Chinese real-name and enterprise verification rest on, checked the way their
standards define them (pure functions; no lookups).

- The resident identity number (居民身份证号码, GB 11643-1999): 17 digits and a check
  character, ``0``-``9`` or ``X``. Digits 7 to 14 are the date of birth (YYYYMMDD). The check
  character makes the weighted sum (weights ``2**(17 - i) mod 11``) come to 1 modulo 11.
- The Unified Social Credit Code (统一社会信用代码, GB 32100-2015): 18 characters over 31
  symbols (digits and capitals without I, O, S, V and Z). The first is the registering
  authority, the second the kind of entity, 3 to 8 the administrative area (digits), 9 to 17
  the organisation code, and the 18th a check character over the first 17 (modulo 31).

``mask`` shows such a number as it may be shown anywhere: the first and last four characters.
"""

import datetime

RESIDENT_ID_WEIGHTS = tuple(2 ** (17 - i) % 11 for i in range(17))
RESIDENT_ID_CHECK = "10X98765432"  # the check character for each weighted sum modulo 11

CREDIT_CODE_SYMBOLS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_CODE_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def normalize(number: str) -> str:
    """Without spaces and hyphens, in capitals (how both numbers are compared and stored)."""
    return "".join(number.split()).replace("-", "").upper()


def resident_id_check_character(first_17: str) -> str:
    """The check character of a resident identity number's first 17 digits."""
    total = sum(
        int(digit) * weight for digit, weight in zip(first_17, RESIDENT_ID_WEIGHTS, strict=True)
    )
    return RESIDENT_ID_CHECK[total % 11]


def resident_id_valid(number: str, *, today: datetime.date | None = None) -> bool:
    """An 18-character resident identity number with a real date of birth (from 1900, not in
    the future) and the right check character."""
    number = normalize(number)
    if len(number) != 18 or not number[:17].isdigit() or not number.isascii():
        return False
    try:
        born = datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= (today or datetime.date.today()):
        return False
    return number[17] == resident_id_check_character(number[:17])


def credit_code_check_character(first_17: str) -> str:
    """The check character of a Unified Social Credit Code's first 17 characters."""
    total = sum(
        CREDIT_CODE_SYMBOLS.index(symbol) * weight
        for symbol, weight in zip(first_17, CREDIT_CODE_WEIGHTS, strict=True)
    )
    return CREDIT_CODE_SYMBOLS[(31 - total % 31) % 31]


def credit_code_valid(code: str) -> bool:
    """An 18-character Unified Social Credit Code over its 31 symbols, with a numeric area code
    and the right check character."""
    code = normalize(code)
    if len(code) != 18 or any(symbol not in CREDIT_CODE_SYMBOLS for symbol in code):
        return False
    if not code[2:8].isdigit():
        return False
    return code[17] == credit_code_check_character(code[:17])


def mask(number: str) -> str:
    """``1101**********1234``: the first and last four characters, the rest as asterisks."""
    number = normalize(number)
    if len(number) <= 8:
        return "*" * len(number)
    return f"{number[:4]}{'*' * (len(number) - 8)}{number[-4:]}"
