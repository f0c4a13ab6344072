"""Wallet fixtures: local Alipay and WeChat Pay gateways for the test session (keys generated
per run), the portal pointed at them, and a CNY organisation with its owner signed in."""

from collections.abc import Iterator

import pytest
from django.test import Client

from tests import factories
from tests.billing.wallets.gateways import Gateways, gateways_start


@pytest.fixture(scope="session")
def gateways() -> Iterator[Gateways]:
    started = gateways_start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def wallet_settings(settings, gateways: Gateways):
    gateways.reset()
    gateways.settings(settings)
    settings.WALLET_QUERY_AFTER_SECONDS = 20
    return settings


@pytest.fixture
def cny_org(db):
    return factories.organization(credit_amount=None, currency="CNY", country="CN")


@pytest.fixture
def owner(cny_org):
    return factories.member(cny_org, "owner")


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client
