"""What the launch form says a launch needs before its button (an SSH key; for a prepaid
organisation, credit for the reserve, with the shortfall and where to top up), and the volume
form's region and storage price.

Fixtures (``tests/compute/conftest.py``): one 8 x H200 host in us-east-1; ``gpu_1x_h200`` at
3.50 USD/h there (the form's first choice: cheapest type, region with most room); the
organisation has 10,000 USD of credit and an SSH key.
"""

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.test.utils import override_settings

from portal.accounts.models import SshKey
from portal.catalog import services as catalog_services
from portal.catalog.synthetic import synthesize_report
from portal.compute import services
from portal.compute.readiness import launch_credit
from tests import factories

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _page(client, url="/instances/launch/", **headers) -> str:
    response = client.get(url, **headers)
    assert response.status_code == 200
    return response.content.decode()


def _needs(page: str) -> str:
    return page.split('id="launch-needs-heading"', 1)[1].split("</ul>", 1)[0]


def _poor_org(credit: str):
    """A prepaid organisation with ``credit`` USD, its owner and an SSH key."""
    org = factories.organization(credit_amount=credit)
    owner = factories.member(org, "owner")
    _key(org, owner)
    return org, owner


def _key(org, owner):
    from portal.accounts import services as account_services

    return account_services.ssh_key_create(
        actor=factories.actor(org, owner), name="laptop", public_key=factories.ed25519_public_key()
    )


def test_enough_credit_and_a_key_are_both_ticked_before_the_button(
    org, owner, ssh_key, compute_catalog
):
    page = _page(_client(owner))
    needs = _needs(page)
    assert page.index('id="launch-needs-heading"') < page.index('class="btn launch-button"')
    assert 'id="need-ssh-key" class="need-ok"' in needs
    assert 'id="need-credit" class="need-ok"' in needs
    # 1 h of 3.50 USD reserved; nothing runs yet, so the whole 10,000 USD is free
    assert "the launch reserves 3.50 USD (1 h of its price)" in needs
    assert "10,000.00 USD of your balance is free" in needs


def test_no_ssh_key_says_so_and_links_to_add_one(org, owner, compute_catalog):
    needs = _needs(_page(_client(owner)))
    assert 'id="need-ssh-key" class="need-missing"' in needs
    assert re.search(r'SSH key: none yet\. <a href="/[^"]*ssh-keys/">Add an SSH key</a>', needs)


def test_too_little_credit_shows_the_shortfall_the_launch_check_would_refuse_with(
    compute_catalog,
):
    org, owner = _poor_org("1.00")
    client = _client(owner)
    needs = _needs(_page(client))
    assert 'id="need-credit" class="need-missing"' in needs
    assert "but only 1.00 USD of your 1.00 USD balance is free" in needs
    assert '<strong id="credit-shortfall">Top up at least 2.50 USD.</strong>' in needs
    assert 'href="/billing/"' in needs
    # billing's own check refuses the launch with the same shortfall
    request = services.LaunchRequest(
        name="alpha",
        instance_type="gpu_1x_h200",
        region="us-east-1",
        ssh_key_ids=tuple(SshKey.objects.filter(organization=org).values_list("pk", flat=True)),
    )
    with pytest.raises(Exception) as refused:
        services.instance_launch(actor=factories.actor(org, owner), request=request)
    assert refused.value.code == "insufficient_credit"
    assert refused.value.details["top_up_at_least"] == "2.50"


def test_what_is_running_is_reserved_first(compute_catalog):
    """With one instance of 3.50 USD/h running, 5.00 USD of credit leaves 1.50 free: the next
    one (3.50 for the reserve hour) is 2.00 short."""
    org, owner = _poor_org("5.00")
    key = SshKey.objects.get(organization=org)
    services.instance_launch(
        actor=factories.actor(org, owner),
        request=services.LaunchRequest(
            name="first", instance_type="gpu_1x_h200", region="us-east-1", ssh_key_ids=(key.pk,)
        ),
    )
    credit = launch_credit(org, Decimal("3.50"))
    assert (credit.balance, credit.reserved, credit.available) == (
        Decimal("5.00"),
        Decimal("3.50"),
        Decimal("1.50"),
    )
    assert credit.shortfall == Decimal("2.00") and not credit.enough


@override_settings(BILLING_CREDIT_RESERVE_HOURS=Decimal("2"))
def test_the_reserve_window_comes_from_billing_settings(compute_catalog):
    _org, owner = _poor_org("6.00")
    needs = _needs(_page(_client(owner)))
    assert "the launch reserves 7.00 USD (2 h of its price)" in needs
    assert "Top up at least 1.00 USD." in needs


def test_an_invoiced_organisation_is_told_its_credit_limit_counts(compute_catalog):
    org = factories.organization(billing_mode="invoiced")
    owner = factories.member(org, "owner")
    _key(org, owner)
    assert launch_credit(org, Decimal("3.50")) is None
    needs = _needs(_page(_client(owner)))
    assert "invoiced monthly; the launch counts against its credit limit" in needs


def test_the_launch_needs_read_in_chinese(org, owner, compute_catalog):
    needs = _needs(_page(_client(owner), HTTP_ACCEPT_LANGUAGE="zh-CN"))
    assert "SSH 密钥：尚无" in needs and "启动需预留" in needs  # noqa: RUF001


# --- the volume form ----------------------------------------------------------------------


def _more_regions(compute_catalog):
    """ap-south-1 (no host, sorts first) and eu-central-1 (a host and a price: room now)."""
    catalog_services.region_ensure(code="ap-south-1", name="Mumbai", country="IN")
    eu = catalog_services.region_ensure(code="eu-central-1", name="Frankfurt", country="DE")
    catalog_services.host_register(
        name=f"h200-eu-{factories.next_id()}",
        region=eu,
        report=synthesize_report(gpu="H200", count=8, seed=f"eu-{factories.next_id()}"),
        vcpus=128,
        ram_gib=2048,
    )
    catalog_services.price_set(
        instance_type=compute_catalog["one"], region=eu, currency="USD", on_demand_per_hour="3.20"
    )


def _selected_region(page: str) -> str:
    select = page.split('name="region"', 1)[1].split("</select>", 1)[0]
    return re.search(r'<option value="([^"]+)" selected>', select).group(1)


def test_a_new_volume_defaults_to_the_first_region_with_room(org, owner, compute_catalog):
    _more_regions(compute_catalog)
    assert _selected_region(_page(_client(owner), "/volumes/")) == "eu-central-1"


def test_a_new_volume_defaults_to_the_region_of_the_latest_instance(
    org, owner, launch, compute_catalog
):
    _more_regions(compute_catalog)
    launch("alpha", region="us-east-1")
    assert _selected_region(_page(_client(owner), "/volumes/")) == "us-east-1"


def test_the_volume_form_shows_the_storage_price_in_the_organisations_currency(compute_catalog):
    usd_owner = factories.member(factories.organization(), "owner")
    page = _page(_client(usd_owner), "/volumes/")
    assert re.search(
        r'id="storage-price">Storage costs <strong class="nowrap">0\.10 USD</strong> per GB-month',
        page,
    )
    cny_owner = factories.member(factories.organization(currency="CNY"), "owner")
    page = _page(_client(cny_owner), "/volumes/")
    assert '<strong class="nowrap">¥0.72</strong> per GB-month' in page
    chinese = _page(_client(cny_owner), "/volumes/", HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert '存储费用为每 GB 每月 <strong class="nowrap">¥0.72</strong>' in chinese
