"""Test data, made through the same services customers use wherever that is practical.

One module per area: ``accounts`` (users, organisations, members, credit, keys, a query
counter), ``catalog`` (GPU models, regions, hosts, instance types, hostile reports), ``compute``
(``World``: a catalog, an organisation, its owner and SSH key; ``settle``), ``billing`` (usage,
invoices, months and the October register), ``api`` (an organisation with several of
everything the API lists) and ``provisioning`` (machine specs). What tests use most is here
too: ``factories.user()``, ``factories.organization()``, ``from tests.factories import World``.
"""

from tests.factories.accounts import (
    PASSWORD,
    QueryCounter,
    actor,
    api_client_for,
    api_key_secret,
    credit,
    ecdsa_public_key,
    ed25519_public_key,
    member,
    next_id,
    openssh,
    organization,
    rsa_public_key,
    user,
)
from tests.factories.compute import World, settle

__all__ = [
    "PASSWORD",
    "QueryCounter",
    "World",
    "actor",
    "api_client_for",
    "api_key_secret",
    "credit",
    "ecdsa_public_key",
    "ed25519_public_key",
    "member",
    "next_id",
    "openssh",
    "organization",
    "rsa_public_key",
    "settle",
    "user",
]
