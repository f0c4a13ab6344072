"""The organisation's billing details: postal address, buyer reference and electronic address,
edited on the settings page (validated by the service), shown in the API and admin."""

import pytest
from django.test import Client

from portal.accounts import services
from portal.accounts.models import AuditEvent
from portal.errors import InvalidInput
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(owner):
    client = Client()
    client.force_login(owner)
    return client


ADDRESS = {
    "street": "Friedrichstraße 100",
    "address_line2": "3. OG",
    "postcode": "10117",
    "city": "Berlin",
    "buyer_reference": "04011000-12345-34",
    "electronic_address": "DE811111111",
    "electronic_address_scheme": "9930",
}


def test_the_billing_address_is_saved_through_the_service_with_an_audit_row(org, owner):
    services.organization_update(actor=factories.actor(org, owner), **ADDRESS)
    org.refresh_from_db()
    assert {key: getattr(org, key) for key in ADDRESS} == ADDRESS
    event = AuditEvent.objects.filter(action="organization.update").latest("id")
    assert set(ADDRESS) <= set(event.details["fields"])


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"city": "Berlin"}, "address_incomplete"),  # no street
        ({"street": "Friedrichstraße 100", "postcode": "10117"}, "address_incomplete"),
        ({"street": "A 1", "city": "B", "postcode": "1"}, "postcode_invalid"),
        ({"street": "A 1", "city": "B", "postcode": "10117<script>"}, "postcode_invalid"),
        ({"electronic_address": "0088123"}, "electronic_address_invalid"),  # no scheme
        ({"electronic_address_scheme": "0088"}, "electronic_address_invalid"),  # no address
        (
            {"electronic_address": "123", "electronic_address_scheme": "0088"},
            "electronic_address_invalid",
        ),
        (
            {"electronic_address": "not-mail", "electronic_address_scheme": "EM"},
            "electronic_address_invalid",
        ),
        (
            {"electronic_address": "x", "electronic_address_scheme": "XX"},
            "electronic_address_invalid",
        ),
        (
            {"electronic_address": "12345", "electronic_address_scheme": "0204"},
            "electronic_address_invalid",
        ),
    ],
)
def test_bad_billing_details_are_refused_with_a_code_and_nothing_is_saved(org, owner, fields, code):
    with pytest.raises(InvalidInput) as caught:
        services.organization_update(actor=factories.actor(org, owner), name="Renamed", **fields)
    assert caught.value.code == code and caught.value.message
    org.refresh_from_db()
    assert org.name != "Renamed" and not org.street and not org.electronic_address


def test_an_address_can_be_cleared_as_a_whole(org, owner):
    actor = factories.actor(org, owner)
    services.organization_update(actor=actor, **ADDRESS)
    empty = dict.fromkeys(ADDRESS, "")
    services.organization_update(actor=actor, **empty)
    org.refresh_from_db()
    assert {key: getattr(org, key) for key in ADDRESS} == empty


def _form(org, **extra):
    data = {
        "name": org.name,
        "billing_email": org.billing_email,
        "country": "DE",
        "tax_id": "DE811111111",
        "currency": org.currency,
    }
    return {**data, **extra}


def test_the_settings_page_edits_the_billing_details(org, owner_client):
    page = owner_client.get("/settings/").content.decode()
    assert "Billing address and e-invoicing" in page
    assert 'name="street"' in page and 'name="electronic_address_scheme"' in page
    response = owner_client.post("/settings/", _form(org, **ADDRESS))
    assert response.status_code == 302
    org.refresh_from_db()
    assert (org.street, org.postcode, org.city) == ("Friedrichstraße 100", "10117", "Berlin")
    page = owner_client.get("/settings/").content.decode()
    assert 'value="Friedrichstraße 100"' in page and 'value="04011000-12345-34"' in page


def test_the_settings_page_shows_the_services_sentence_for_bad_details(org, owner_client):
    response = owner_client.post("/settings/", _form(org, city="Berlin"))
    assert response.status_code == 200
    assert "A postal address needs at least the street and the city." in response.content.decode()
    org.refresh_from_db()
    assert org.city == ""


def test_viewers_see_the_billing_details_but_cannot_change_them(org):
    client = Client()
    client.force_login(factories.member(org, "viewer"))
    page = client.get("/settings/").content.decode()
    assert 'name="street"' in page and "disabled" in page
    assert client.post("/settings/", _form(org, **ADDRESS)).status_code == 403


def test_the_api_shows_the_billing_details(org, owner):
    services.organization_update(actor=factories.actor(org, owner), **ADDRESS)
    _, secret = services.api_key_create(actor=factories.actor(org, owner), name="ci", role="viewer")
    body = Client().get("/api/v1/organization", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert {key: body[key] for key in ADDRESS} == ADDRESS
    assert body["einvoice_profile"] == "en16931"


def test_admin_shows_the_billing_details(org, owner):
    services.organization_update(actor=factories.actor(org, owner), **ADDRESS)
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    page = staff.get(f"/admin/accounts/organization/{org.pk}/change/").content.decode()
    assert "Billing address and e-invoicing" in page
    assert 'value="Friedrichstraße 100"' in page and 'name="electronic_address_scheme"' in page
    assert 'name="einvoice_profile"' in page


def test_peppol_needs_an_e_invoice_address_of_a_peppol_scheme(org, owner):
    actor = factories.actor(org, owner)
    for fields in (
        {},
        {"electronic_address": "ap@example.com", "electronic_address_scheme": "EM"},
    ):
        with pytest.raises(InvalidInput) as caught:
            services.organization_update(actor=actor, einvoice_profile="peppol_bis3", **fields)
        assert caught.value.code == "einvoice_profile_incomplete"
    services.organization_update(
        actor=actor,
        einvoice_profile="peppol_bis3",
        electronic_address="4035811991014",
        electronic_address_scheme="0088",
    )
    org.refresh_from_db()
    assert org.einvoice_profile == "peppol_bis3"
    with pytest.raises(InvalidInput):  # and keeps needing it
        services.organization_update(
            actor=actor, electronic_address="", electronic_address_scheme=""
        )


def test_xrechnung_needs_the_full_address_a_buyer_reference_and_an_e_invoice_address(org, owner):
    actor = factories.actor(org, owner)
    with pytest.raises(InvalidInput) as caught:
        services.organization_update(
            actor=actor, einvoice_profile="xrechnung3", street="Friedrichstraße 100", city="Berlin"
        )
    assert caught.value.code == "einvoice_profile_incomplete"
    assert caught.value.details["missing"] == ["postcode", "buyer reference", "electronic address"]
    assert "postcode, buyer reference, electronic address" in caught.value.message
    services.organization_update(actor=actor, einvoice_profile="xrechnung3", **ADDRESS)
    org.refresh_from_db()
    assert org.einvoice_profile == "xrechnung3"


def test_an_unknown_profile_is_refused(org, owner):
    with pytest.raises(InvalidInput) as caught:
        services.organization_update(actor=factories.actor(org, owner), einvoice_profile="ubl")
    assert caught.value.code == "einvoice_profile_incomplete"


def test_the_profile_is_chosen_on_the_settings_page(org, owner_client):
    page = owner_client.get("/settings/").content.decode()
    assert 'name="einvoice_profile"' in page and "XRechnung 3.0" in page
    response = owner_client.post("/settings/", _form(org, einvoice_profile="xrechnung3"))
    assert "XRechnung 3.0 needs these billing details too" in response.content.decode()
    response = owner_client.post("/settings/", _form(org, einvoice_profile="xrechnung3", **ADDRESS))
    assert response.status_code == 302
    org.refresh_from_db()
    assert org.einvoice_profile == "xrechnung3"


def test_admin_holds_the_billing_details_to_the_same_rules(org):
    staff = Client()
    staff.force_login(factories.user(is_staff=True, is_superuser=True))
    url = f"/admin/accounts/organization/{org.pk}/change/"
    data = {
        "name": org.name,
        "slug": org.slug,
        "billing_email": org.billing_email,
        "country": "DE",
        "tax_id": "",
        "street": "",
        "address_line2": "",
        "postcode": "",
        "city": "",
        "buyer_reference": "",
        "electronic_address": "4035811991014",
        "electronic_address_scheme": "",  # an address without its scheme
        "einvoice_profile": "en16931",
        "currency": org.currency,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
    }
    response = staff.post(url, data)
    assert response.status_code == 200
    assert "Give the electronic address together with its scheme" in response.content.decode()
    response = staff.post(url, {**data, "electronic_address_scheme": "0088"})
    assert response.status_code == 302, response.content.decode()[:2000]
    org.refresh_from_db()
    assert (org.electronic_address, org.electronic_address_scheme) == ("4035811991014", "0088")
