import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from portal.accounts.ssh import parse_public_key
from portal.errors import InvalidInput
from tests import factories


@pytest.mark.parametrize(
    ("make", "key_type", "bits"),
    [
        (lambda: factories.ed25519_public_key("me@laptop"), "ssh-ed25519", 256),
        (lambda: factories.ecdsa_public_key(ec.SECP256R1()), "ecdsa-sha2-nistp256", 256),
        (lambda: factories.ecdsa_public_key(ec.SECP384R1()), "ecdsa-sha2-nistp384", 384),
        (lambda: factories.ecdsa_public_key(ec.SECP521R1()), "ecdsa-sha2-nistp521", 521),
        (lambda: factories.rsa_public_key(2048), "ssh-rsa", 2048),
        (lambda: factories.rsa_public_key(4096), "ssh-rsa", 4096),
    ],
)
def test_supported_keys_parse_with_type_and_size(make, key_type, bits):
    parsed = parse_public_key(make())
    assert parsed.key_type == key_type
    assert parsed.bits == bits
    assert parsed.fingerprint.startswith("SHA256:")
    assert len(parsed.fingerprint) == len("SHA256:") + 43


def test_fingerprint_matches_ssh_keygen(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    line = factories.ed25519_public_key("fp@test")
    path = tmp_path / "key.pub"
    path.write_text(line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split()[1] == parse_public_key(line).fingerprint


def test_known_key_has_known_fingerprint():
    # Fingerprint printed by `ssh-keygen -lf` for this key.
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyURDUFmjUDgU+a0scWgOXjY1rfEIaKXlgjnwuJdbcV demo@laptop"
    parsed = parse_public_key(line)
    assert parsed.fingerprint == "SHA256:r2MOeegcnGwmifHsPermxdXIJcFGWtuY9LJPlncs5mM"
    assert (parsed.key_type, parsed.bits) == ("ssh-ed25519", 256)
    assert parsed.comment == "demo@laptop"
    assert parsed.normalized == line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "Paste an SSH public key"),
        ("hello world", "not valid base64"),
        ("ssh-ed25519", "type and a base64 body"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIyURDUF", "not a valid SSH public key"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "not a valid SSH public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "PEM"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP8=", "not a valid SSH public key"),
        ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "exactly one"),
    ],
)
def test_garbage_is_rejected_with_a_clear_message(text, fragment):
    with pytest.raises(InvalidInput) as caught:
        parse_public_key(text)
    assert caught.value.code == "ssh_key_invalid"
    assert fragment in caught.value.message


def test_short_rsa_key_is_rejected():
    with pytest.raises(InvalidInput, match="at least 2048 bits; this one has 1024"):
        parse_public_key(factories.rsa_public_key(1024))


def test_type_that_does_not_match_the_body_is_rejected():
    body = factories.ed25519_public_key().split()[1]
    with pytest.raises(InvalidInput):
        parse_public_key(f"ssh-rsa {body}")
