"""Payment references: ``GC`` + 7 characters + 1 check character, e.g. ``GC7K3MQ9PY``.

The alphabet has 31 symbols and none that is easily misread (no 0/O, 1/I/L); the check
character is the weighted sum of the 7 characters (weights 1 to 7) modulo 31, so any one
mistyped character and any two neighbours swapped are detected (31 is prime and the weights
are distinct and below it)."""

import re
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
PREFIX = "GC"
BODY_LENGTH = 7
LENGTH = len(PREFIX) + BODY_LENGTH + 1
_VALUE = {symbol: index for index, symbol in enumerate(ALPHABET)}
_CANDIDATE = re.compile(f"{PREFIX}[{ALPHABET}]{{{BODY_LENGTH + 1}}}")


def check_character(body: str) -> str:
    total = sum((position + 1) * _VALUE[symbol] for position, symbol in enumerate(body))
    return ALPHABET[total % len(ALPHABET)]


def reference_generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return PREFIX + body + check_character(body)


def normalize(text: str) -> str:
    """Upper case without spaces, dashes or other separators (how people type a reference)."""
    return re.sub(r"[^0-9A-Z]", "", (text or "").upper())


def reference_valid(reference: str) -> bool:
    code = normalize(reference)
    if len(code) != LENGTH or not _CANDIDATE.fullmatch(code):
        return False
    body, check = code[len(PREFIX) : -1], code[-1]
    return check_character(body) == check


def references_in(remark: str) -> list[str]:
    """The valid references quoted in a transfer's remark (附言), in order, without repeats.
    Separators inside the reference (``GC 7K3M-Q9PX``) are forgiven."""
    text = normalize(remark)
    found: list[str] = []
    start = text.find(PREFIX)
    while start != -1:
        candidate = text[start : start + LENGTH]
        if reference_valid(candidate) and candidate not in found:
            found.append(candidate)
        start = text.find(PREFIX, start + 1)
    return found
