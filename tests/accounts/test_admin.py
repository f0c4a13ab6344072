import pytest
from django.test import Client

from portal.accounts import services
from portal.accounts.models import ApiKey, AuditEvent
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(factories.user(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def populated(org, owner):
    actor = factories.actor(org, owner)
    services.ssh_key_create(actor=actor, public_key=factories.ed25519_public_key())
    api_key, secret = services.api_key_create(actor=actor, name="ops", role="viewer")
    services.invitation_create(actor=actor, email="i@example.com", role="viewer")
    return api_key, secret


@pytest.mark.parametrize(
    "model", ["user", "organization", "invitation", "apikey", "sshkey", "auditevent"]
)
def test_admin_lists_search_and_change_pages_load(staff_client, populated, model):
    response = staff_client.get(f"/admin/accounts/{model}/?q=example")
    assert response.status_code == 200
    first = staff_client.get(f"/admin/accounts/{model}/").context["cl"].result_list[0]
    assert staff_client.get(f"/admin/accounts/{model}/{first.pk}/change/").status_code == 200


def test_admin_never_shows_an_api_key_secret_or_its_hash(staff_client, populated):
    api_key, secret = populated
    html = staff_client.get(f"/admin/accounts/apikey/{api_key.pk}/change/").content.decode()
    assert secret not in html
    assert ApiKey.objects.get(pk=api_key.pk).secret_hash not in html
    assert staff_client.get("/admin/accounts/apikey/add/").status_code == 403


def test_admin_audit_log_is_read_only(staff_client, populated):
    event = AuditEvent.objects.first()
    assert (
        staff_client.post(
            f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_customers_cannot_open_admin(org, owner):
    client = Client()
    client.force_login(owner)
    assert client.get("/admin/").status_code == 302
