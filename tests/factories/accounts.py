"""Users, organisations, members, credit, API keys and SSH keys, and a query counter."""

import itertools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from portal.accounts import services
from portal.accounts.models import Membership, Organization, User
from portal.accounts.types import Actor

PASSWORD = "correct-horse-battery-42"
_seq = itertools.count(1)


def next_id() -> int:
    return next(_seq)


def user(email: str | None = None, **extra) -> User:
    n = next(_seq)
    return User.objects.create_user(
        email=email or f"user{n}@example.com", password=PASSWORD, full_name=f"User {n}", **extra
    )


def organization(
    name: str | None = None, *, credit_amount="10000", credit_limit="100000", **extra
) -> Organization:
    """An organisation; prepaid ones get ``credit_amount`` of granted credit so that launches
    pass the billing check (``credit_amount=None`` for none), invoiced ones a credit limit of
    ``credit_limit`` as finance would grant it (``None`` for none)."""
    n = next(_seq)
    fields = {"billing_email": f"billing{n}@example.com", "country": "DE", "currency": "USD"}
    fields.update(extra)
    org = Organization.objects.create(name=name or f"Org {n}", slug=f"org-{n}", **fields)
    if credit_amount is not None and org.billing_mode == "prepaid":
        credit(org, credit_amount)
    if credit_limit is not None and org.billing_mode == "invoiced":
        from billing.models import BillingProfile

        BillingProfile.objects.update_or_create(
            organization=org, defaults={"credit_limit": credit_limit}
        )
    return org


def credit(org: Organization, amount="10000", reason: str = "test credit"):
    """Prepaid credit, so launches pass the billing check (a grant in the ledger)."""
    from billing.ledger.services import ledger_post

    entry, _ = ledger_post(
        organization=org,
        kind="grant",
        amount=amount,
        idempotency_key=f"test-credit:{org.pk}:{next(_seq)}",
        description=f"Credit granted: {reason}",
        actor_label="tests",
    )
    return entry


def member(org: Organization, role: str, account: User | None = None) -> User:
    account = account or user()
    Membership.objects.create(user=account, organization=org, role=role)
    return account


def actor(org: Organization, account: User | None = None, role: str | None = None) -> Actor:
    if account is not None and role is None:
        role = Membership.objects.get(user=account, organization=org).role
    return Actor(user=account, organization=org, role=role, ip_address="127.0.0.1")


def api_key_secret(org: Organization, role: str, name: str = "test key") -> str:
    _, secret = services.api_key_create(actor=Actor.system(org), name=name, role=role)
    return secret


def openssh(key) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def ed25519_public_key(comment: str = "me@laptop") -> str:
    return f"{openssh(ed25519.Ed25519PrivateKey.generate().public_key())} {comment}".strip()


def ecdsa_public_key(curve=None, comment: str = "") -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1()).public_key()
    return f"{openssh(key)} {comment}".strip()


def rsa_public_key(bits: int = 2048, comment: str = "") -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return f"{openssh(key)} {comment}".strip()


def api_client_for(org: Organization, role: str):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_secret(org, role)}")
    return client


class QueryCounter:
    """Counts the SQL statements run inside ``with QueryCounter() as counted:`` (``counted.n``).

    Uses ``connection.execute_wrapper``, which, unlike ``connection.queries``, is not reset
    when a request starts.
    """

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection
        self.n = 0

    def __call__(self, execute, sql, params, many, context):
        self.n += 1
        return execute(sql, params, many, context)

    def __enter__(self) -> "QueryCounter":
        self._cm = self.connection.execute_wrapper(self)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)
