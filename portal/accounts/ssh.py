"""Parsing OpenSSH public keys for real, with the SHA256 fingerprint ``ssh-keygen -l`` prints."""

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from portal.accounts.errors import AccountsErrorCode
from portal.errors import InvalidInput

MIN_RSA_BITS = 2048
MAX_KEY_LENGTH = 16_384


@dataclass(frozen=True)
class ParsedSshKey:
    key_type: str
    bits: int
    body: str
    comment: str
    fingerprint: str

    @property
    def normalized(self) -> str:
        return " ".join(part for part in (self.key_type, self.body, self.comment) if part)


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code=AccountsErrorCode.SSH_KEY_INVALID)


def parse_public_key(text: str) -> ParsedSshKey:
    """Parse one OpenSSH public key line (``type base64 [comment]``) or raise ``ssh_key_invalid``."""
    text = (text or "").strip()
    if not text:
        raise _invalid("Paste an SSH public key (the contents of a .pub file).")
    if len(text) > MAX_KEY_LENGTH or "\n" in text:
        raise _invalid("Paste exactly one SSH public key on one line.")
    if text.startswith("-----BEGIN"):
        raise _invalid("This looks like a PEM key. Paste the OpenSSH public key (.pub) instead.")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise _invalid("An SSH public key has a type and a base64 body, e.g. 'ssh-ed25519 AAAA…'.")
    key_type, body = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("The key body is not valid base64.") from None
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {body}".encode())
    except UnsupportedAlgorithm:
        raise _invalid(
            f"Key type '{key_type}' is not supported; use ed25519, ecdsa or rsa."
        ) from None
    except (ValueError, TypeError):
        raise _invalid("This is not a valid SSH public key.") from None

    if isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    elif isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise _invalid(f"RSA keys must have at least {MIN_RSA_BITS} bits; this one has {bits}.")
    else:
        raise _invalid(f"Key type '{key_type}' is not supported; use ed25519, ecdsa or rsa.")

    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return ParsedSshKey(
        key_type=key_type, bits=bits, body=body, comment=comment, fingerprint=f"SHA256:{digest}"
    )
