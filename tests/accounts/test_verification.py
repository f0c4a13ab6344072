"""Real-name and enterprise verification: submitting, encryption at rest, masking everywhere,
the operators' review in admin, the documents, and the policy that refuses launches in China
until the organisation is verified."""

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client

from portal.accounts import identity
from portal.accounts import verification as services
from portal.accounts.models import AuditEvent, OrganizationVerification
from portal.accounts.types import Actor
from portal.compute import services as compute_services
from portal.errors import Conflict, InvalidInput, PermissionDenied
from tests import factories
from tests.factories.compute import World, settle

ROOT = Path(__file__).resolve().parents[2]
PERSON_ID = "11010519491231002X"  # GB 11643's example number
AGENT_ID = "440305" + "19900307" + "123"
AGENT_ID += identity.resident_id_check_character(AGENT_ID)
CREDIT_CODE = "91350100M000100Y43"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(autouse=True)
def private_documents(settings, tmp_path):
    settings.VERIFICATION_DOCUMENT_DIR = tmp_path / "private"
    return settings.VERIFICATION_DOCUMENT_DIR


def owner_client(org=None):
    org = org or factories.organization()
    owner = factories.member(org, "owner")
    client = Client()
    client.force_login(owner)
    return org, owner, client


def licence(content: bytes = PDF, name: str = "licence.pdf") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/pdf")


def enterprise_post(**overrides) -> dict:
    data = {
        "kind": "enterprise",
        "company_name": "深圳算力科技有限公司",
        "credit_code": CREDIT_CODE,
        "authorized_person_name": "李四",
        "authorized_id_number": AGENT_ID,
        "business_licence": licence(),
    }
    data.update(overrides)
    return data


def submit_individual(org, owner, number=PERSON_ID):
    return services.verification_submit(
        actor=factories.actor(org, owner),
        submission=services.Submission(kind="individual", name="张三", id_number=number),
    )


def reviewer(*, permitted: bool = True):
    staff = factories.user(is_staff=True)
    if permitted:
        staff.user_permissions.add(Permission.objects.get(codename="review_verification"))
    return staff


def operator(staff, org):
    return Actor.for_operator(staff, org, "127.0.0.1")


# --- submitting ----------------------------------------------------------------------------------


def test_owner_submits_an_individual_verification_on_the_page(db):
    org, owner, client = owner_client()
    assert client.get("/organization/verification/").status_code == 200
    response = client.post(
        "/organization/verification/",
        {"kind": "individual", "name": "张三", "id_number": "110105 19491231 002x"},
    )
    assert response.status_code == 302
    verification = OrganizationVerification.objects.get(organization=org)
    assert (verification.kind, verification.status, verification.is_current) == (
        "individual",
        "submitted",
        True,
    )
    assert verification.id_number_masked == "1101**********002X"
    assert services.identity_number_decrypt(verification.id_number_encrypted) == PERSON_ID
    page = client.get("/organization/verification/").content.decode()
    assert "1101**********002X" in page and PERSON_ID not in page
    assert 'data-state="submitted"' in page
    event = AuditEvent.objects.get(organization=org, action="verification.submit")
    assert event.actor_user == owner and event.details["id_number"] == "1101**********002X"
    assert PERSON_ID not in str(event.details)
    org.refresh_from_db()
    assert org.verified_as == ""  # submitted is not verified


def test_owner_submits_an_enterprise_verification_with_its_licence(db, private_documents):
    org, _owner, client = owner_client()
    response = client.post("/organization/verification/", enterprise_post())
    assert response.status_code == 302, response.content.decode()[:2000]
    verification = OrganizationVerification.objects.get(organization=org)
    assert verification.kind == "enterprise"
    assert verification.credit_code == CREDIT_CODE  # not personal: stored as it is
    assert verification.authorized_person_name == "李四"
    assert services.identity_number_decrypt(verification.id_number_encrypted) == AGENT_ID
    assert verification.business_licence_type == "application/pdf"
    stored = Path(verification.business_licence.path)
    assert stored.is_relative_to(private_documents) and stored.read_bytes() == PDF
    assert "licence" not in stored.name  # the customer's file name is not kept
    for public in (settings.STATIC_ROOT, *settings.STATICFILES_DIRS):
        assert not stored.is_relative_to(Path(public))


def test_only_owners_submit(db):
    org = factories.organization()
    factories.member(org, "owner")
    for role in ("admin", "member", "billing", "viewer"):
        client = Client()
        client.force_login(factories.member(org, role))
        assert client.get("/organization/verification/").status_code == 200
        response = client.post(
            "/organization/verification/",
            {"kind": "individual", "name": "张三", "id_number": PERSON_ID},
        )
        assert response.status_code == 403
        api = factories.api_client_for(org, role)
        refused = api.post(
            "/api/v1/verification", {"kind": "individual", "name": "x", "id_number": PERSON_ID}
        )
        assert refused.status_code == 403
    assert not OrganizationVerification.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "code"),
    [
        ({"kind": "individual", "name": "张三", "id_number": "110105194912310021"}, "id_number",
         "identity_number_invalid"),
        ({"kind": "individual", "name": "张三", "id_number": "11010519490230002X"}, "id_number",
         "identity_number_invalid"),
        ({"kind": "enterprise", "credit_code": "91350100M000100Y44"}, "credit_code",
         "credit_code_invalid"),
        ({"kind": "enterprise", "authorized_id_number": "123"}, "authorized_id_number",
         "identity_number_invalid"),
    ],
)  # fmt: skip
def test_bad_numbers_are_refused_next_to_the_field_and_nothing_is_written(
    db, data, field, code, private_documents
):
    _org, _owner, client = owner_client()
    post = enterprise_post(**data) if data["kind"] == "enterprise" else data
    response = client.post("/organization/verification/", post)
    assert response.status_code == 422
    page = response.content.decode()
    error = page.split(f'id="id_{field}_error"', 1)[1].split("</ul>", 1)[0]
    assert code in error
    assert not OrganizationVerification.objects.exists()
    assert not AuditEvent.objects.filter(action="verification.submit").exists()
    assert not private_documents.exists() or not any(private_documents.rglob("*.*"))


def test_the_api_refuses_bad_numbers_with_their_codes(db):
    org = factories.organization()
    factories.member(org, "owner")
    api = factories.api_client_for(org, "owner")
    response = api.post(
        "/api/v1/verification",
        {"kind": "individual", "name": "张三", "id_number": "110105194912310021"},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "identity_number_invalid"
    assert error["details"]["codes"] == {"id_number": "identity_number_invalid"}
    response = api.post(
        "/api/v1/verification",
        {
            "kind": "enterprise",
            "name": "Acme",
            "credit_code": "91350100M000100Y44",
            "authorized_person_name": "李四",
            "id_number": AGENT_ID,
            "business_licence": licence(),
        },
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "credit_code_invalid"
    assert not OrganizationVerification.objects.exists()


def test_a_pending_or_approved_verification_is_not_submitted_again(db):
    org = factories.organization()
    owner = factories.member(org, "owner")
    first = submit_individual(org, owner)
    with pytest.raises(Conflict) as pending:
        submit_individual(org, owner)
    assert pending.value.code == "verification_pending"
    services.verification_approve(actor=operator(reviewer(), org), verification_id=first.pk)
    with pytest.raises(Conflict) as approved:
        submit_individual(org, owner)
    assert approved.value.code == "verification_already_approved"


# --- encryption at rest --------------------------------------------------------------------------


def test_identity_numbers_are_encrypted_at_rest(db, settings):
    org = factories.organization()
    owner = factories.member(org, "owner")
    verification = submit_individual(org, owner)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM accounts_organizationverification WHERE id = %s", [verification.pk]
        )
        raw = " ".join(str(value) for value in cursor.fetchone())
    assert PERSON_ID not in raw and PERSON_ID[:17] not in raw and PERSON_ID[6:14] not in raw
    token = verification.id_number_encrypted
    # the configured key decrypts it, another key does not
    assert Fernet(settings.IDENTITY_ENCRYPTION_KEY.encode()).decrypt(token.encode()) == (
        PERSON_ID.encode()
    )
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(token.encode())
    settings.IDENTITY_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(InvalidToken):
        services.identity_number_decrypt(token)
    # a rotated key list (new key first) still reads the old tokens
    old = "dGVzdC1pZGVudGl0eS1rZXktbm90LWZvci1wcm9kISE="
    settings.IDENTITY_ENCRYPTION_KEY = f"{Fernet.generate_key().decode()},{old}"
    assert services.identity_number_decrypt(token) == PERSON_ID


def test_the_keyed_hash_finds_a_number_without_decrypting(db):
    org = factories.organization()
    verification = submit_individual(org, factories.member(org, "owner"))
    assert verification.id_number_hash == services.identity_number_hash(PERSON_ID.lower())
    assert PERSON_ID not in verification.id_number_hash
    staff = reviewer()
    client = Client()
    client.force_login(staff)
    found = client.get("/admin/accounts/organizationverification/", {"q": PERSON_ID})
    assert found.status_code == 200 and org.name in found.content.decode()


def test_production_refuses_to_start_without_the_encryption_key():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "0", "IDENTITY_ENCRYPTION_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "IDENTITY_ENCRYPTION_KEY must be set" in result.stderr


# --- masked everywhere: pages, admin, API, logs ------------------------------------------------


def test_the_api_shows_state_and_masked_numbers_only(db):
    org = factories.organization()
    owner = factories.member(org, "owner")
    api = factories.api_client_for(org, "viewer")
    assert api.get("/api/v1/verification").json()["state"] == "unverified"
    owner_api = factories.api_client_for(org, "owner")
    created = owner_api.post(
        "/api/v1/verification",
        {
            "kind": "enterprise",
            "name": "Acme 科技",
            "credit_code": CREDIT_CODE,
            "authorized_person_name": "李四",
            "id_number": AGENT_ID,
            "business_licence": licence(PNG, "licence.png"),
        },
        format="multipart",
    )
    assert created.status_code == 201, created.content
    assert AGENT_ID not in created.content.decode()
    body = api.get("/api/v1/verification").json()
    assert body["state"] == "submitted" and body["kind"] == "enterprise"
    assert body["id_number_masked"] == identity.mask(AGENT_ID)
    assert body["credit_code"] == CREDIT_CODE and body["has_business_licence"] is True
    assert AGENT_ID not in str(body) and "id_number_encrypted" not in body
    verification = OrganizationVerification.objects.get(organization=org)
    services.verification_reject(
        actor=operator(reviewer(), org), verification_id=verification.pk, reason="照片不清楚"
    )
    body = api.get("/api/v1/verification").json()
    assert body["state"] == "rejected" and body["rejection_reason"] == "照片不清楚"
    assert owner  # the owner's membership lets the key act


def test_a_submitted_number_never_reaches_the_logs(db, caplog, capfd, settings):
    settings.LOG_REQUESTS = True
    org, _owner, client = owner_client()
    api = factories.api_client_for(org, "owner")
    with caplog.at_level(logging.DEBUG):
        client.post(  # refused (bad check character), then accepted
            "/organization/verification/",
            {"kind": "individual", "name": "张三", "id_number": PERSON_ID[:17] + "1"},
        )
        api.post(
            "/api/v1/verification",
            {"kind": "individual", "name": "张三", "id_number": PERSON_ID[:17] + "1"},
            format="json",
        )
        client.post(
            "/organization/verification/",
            {"kind": "individual", "name": "张三", "id_number": PERSON_ID},
        )
        verification = OrganizationVerification.objects.get(organization=org)
        services.verification_approve(
            actor=operator(reviewer(), org), verification_id=verification.pk
        )
    captured = caplog.text + "".join(capfd.readouterr())
    assert caplog.records  # the requests were logged
    assert PERSON_ID not in captured and PERSON_ID[:17] not in captured
    assert PERSON_ID.lower() not in captured


def test_admin_shows_masked_numbers_and_only_to_reviewers(db):
    org = factories.organization()
    verification = submit_individual(org, factories.member(org, "owner"))
    changelist = "/admin/accounts/organizationverification/"
    change = f"{changelist}{verification.pk}/change/"
    unpermitted = Client()
    unpermitted.force_login(reviewer(permitted=False))
    assert unpermitted.get(changelist).status_code == 403
    assert unpermitted.get(change).status_code == 403
    assert "organizationverification" not in unpermitted.get("/admin/").content.decode()
    permitted = Client()
    permitted.force_login(reviewer())
    listing = permitted.get(changelist).content.decode()
    assert "1101**********002X" in listing and PERSON_ID not in listing
    page = permitted.get(change)
    assert page.status_code == 200
    html = page.content.decode()
    assert "1101**********002X" in html and PERSON_ID not in html
    assert verification.id_number_encrypted not in html
    assert "verification-approve" in html and "verification-reject" in html
    assert "organizationverification" in permitted.get("/admin/").content.decode()


# --- review ----------------------------------------------------------------------------------------


def test_approve_in_admin_audits_emails_and_verifies(db, django_capture_on_commit_callbacks):
    org = factories.organization(name="Acme")
    owner = factories.member(org, "owner")
    verification = submit_individual(org, owner)
    staff = reviewer()
    client = Client()
    client.force_login(staff)
    url = f"/admin/accounts/organizationverification/{verification.pk}/approve/"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url)
    assert response.status_code == 302
    verification.refresh_from_db()
    org.refresh_from_db()
    assert verification.status == "approved" and verification.reviewed_by == staff
    assert org.verified_as == "individual"
    event = AuditEvent.objects.get(organization=org, action="verification.approve")
    assert event.actor_user == staff and staff.email in event.actor_label
    assert [m.to for m in mail.outbox] == [[owner.email]]
    assert "verified" in mail.outbox[0].subject and PERSON_ID not in mail.outbox[0].body
    page = Client()
    page.force_login(owner)
    assert 'data-state="approved"' in page.get("/organization/verification/").content.decode()


def test_reject_needs_a_reason_the_customer_sees_and_then_resubmits(
    db, django_capture_on_commit_callbacks
):
    org, owner, client = owner_client()
    verification = submit_individual(org, owner)
    staff = reviewer()
    admin_client = Client()
    admin_client.force_login(staff)
    url = f"/admin/accounts/organizationverification/{verification.pk}/reject/"
    assert admin_client.get(url).status_code == 200
    assert admin_client.post(url, {"reason": ""}).status_code == 200  # the form again
    verification.refresh_from_db()
    assert verification.status == "submitted"
    with pytest.raises(InvalidInput) as missing:
        services.verification_reject(
            actor=operator(staff, org), verification_id=verification.pk, reason="  "
        )
    assert missing.value.code == "verification_reason_required"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, {"reason": "The name does not match the number."})
    assert response.status_code == 302
    verification.refresh_from_db()
    assert verification.status == "rejected"
    event = AuditEvent.objects.get(organization=org, action="verification.reject")
    assert event.details["reason"] == "The name does not match the number."
    assert event.actor_user == staff
    assert "The name does not match the number." in mail.outbox[-1].body
    page = client.get("/organization/verification/").content.decode()
    assert "The name does not match the number." in page and 'id="verification-form"' in page
    settings_page = client.get("/settings/").content.decode()  # the notice there too
    assert "The name does not match the number." in settings_page
    # resubmission: a new current row, the rejected one kept as history
    again = submit_individual(org, owner)
    assert again.pk != verification.pk
    verification.refresh_from_db()
    assert not verification.is_current and again.is_current
    assert OrganizationVerification.objects.filter(organization=org).count() == 2


def test_revoke_unverifies_with_a_reason(db, django_capture_on_commit_callbacks):
    org = factories.organization()
    owner = factories.member(org, "owner")
    verification = submit_individual(org, owner)
    staff = reviewer()
    services.verification_approve(actor=operator(staff, org), verification_id=verification.pk)
    client = Client()
    client.force_login(staff)
    url = f"/admin/accounts/organizationverification/{verification.pk}/revoke/"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url, {"reason": "Licence withdrawn"}).status_code == 302
    verification.refresh_from_db()
    org.refresh_from_db()
    assert verification.status == "revoked" and org.verified_as == ""
    assert AuditEvent.objects.filter(organization=org, action="verification.revoke").exists()
    assert "revoked" in mail.outbox[-1].subject


def test_staff_without_the_permission_cannot_decide(db):
    org = factories.organization()
    verification = submit_individual(org, factories.member(org, "owner"))
    staff = reviewer(permitted=False)
    client = Client()
    client.force_login(staff)
    base = f"/admin/accounts/organizationverification/{verification.pk}"
    assert client.post(f"{base}/approve/").status_code == 403
    assert client.post(f"{base}/reject/", {"reason": "x"}).status_code == 403
    with pytest.raises(PermissionDenied):
        services.verification_approve(actor=operator(staff, org), verification_id=verification.pk)
    with pytest.raises(PermissionDenied):  # nor may a customer, even an owner
        services.verification_approve(
            actor=factories.actor(org, role="owner"), verification_id=verification.pk
        )
    verification.refresh_from_db()
    assert verification.status == "submitted"


# --- documents -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upload", "code"),
    [
        (SimpleUploadedFile("licence.pdf", b"<html>not a pdf</html>", "application/pdf"),
         "document_invalid"),
        (SimpleUploadedFile("licence.png", b"GIF89a" + b"\x00" * 20, "image/png"),
         "document_invalid"),
    ],
)  # fmt: skip
def test_documents_are_checked_by_their_real_type(db, upload, code):
    _org, _owner, client = owner_client()
    response = client.post("/organization/verification/", enterprise_post(business_licence=upload))
    assert response.status_code == 422
    assert code in response.content.decode()
    assert not OrganizationVerification.objects.exists()


def test_documents_over_the_size_limit_are_refused(db, settings):
    settings.VERIFICATION_DOCUMENT_MAX_BYTES = 1024
    _org, _owner, client = owner_client()
    big = licence(PDF + b"0" * 2048)
    response = client.post("/organization/verification/", enterprise_post(business_licence=big))
    assert response.status_code == 422 and "document_too_large" in response.content.decode()
    missing = client.post("/organization/verification/", enterprise_post(business_licence=""))
    assert missing.status_code == 422 and "document_required" in missing.content.decode()
    assert not OrganizationVerification.objects.exists()


def test_documents_are_served_only_to_owners_and_reviewers(db):
    org, _owner, client = owner_client()
    letter = SimpleUploadedFile("letter.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 32, "image/jpeg")
    assert (
        client.post(
            "/organization/verification/", enterprise_post(authorization_letter=letter)
        ).status_code
        == 302
    )
    verification = OrganizationVerification.objects.get(organization=org)
    response = client.get("/organization/verification/licence/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PDF
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"].startswith("attachment")
    letter_response = client.get("/organization/verification/authorization-letter/")
    assert letter_response["Content-Type"] == "image/jpeg"
    for role in ("admin", "member", "viewer"):
        other = Client()
        other.force_login(factories.member(org, role))
        assert other.get("/organization/verification/licence/").status_code == 403
    _stranger_org, _stranger, stranger_client = owner_client()
    assert stranger_client.get("/organization/verification/licence/").status_code == 404
    admin_url = f"/admin/accounts/organizationverification/{verification.pk}/document/licence/"
    unpermitted = Client()
    unpermitted.force_login(reviewer(permitted=False))
    assert unpermitted.get(admin_url).status_code == 403
    permitted = Client()
    permitted.force_login(reviewer())
    served = permitted.get(admin_url)
    assert served.status_code == 200 and b"".join(served.streaming_content) == PDF
    assert Client().get("/organization/verification/licence/").status_code == 302  # log in
    # the file is not under any URL the portal serves
    assert str(settings.VERIFICATION_DOCUMENT_DIR) not in str(settings.STATIC_ROOT)


# --- policy ---------------------------------------------------------------------------------------


def china_world() -> World:
    return World(region_code="cn-north-1", region_country="CN")


def test_a_launch_in_china_is_refused_until_the_organisation_is_verified(db):
    world = china_world()
    owner_api = factories.api_client_for(world.org, "owner")
    body = {
        "name": "box",
        "instance_type": "gpu_1x_h200",
        "region": "cn-north-1",
        "image": world.image.name,
        "ssh_key_ids": [world.ssh_key.pk],
    }
    refused = owner_api.post("/api/v1/instances", body, format="json")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "verification_required"
    assert error["details"]["required"] == ["enterprise", "individual"]
    assert error["details"]["verification_url"] == "/organization/verification/"
    client = Client()
    client.force_login(world.owner)
    page = client.post(
        "/instances/launch/",
        {
            "name": "box",
            "instance_type": "gpu_1x_h200",
            "region": "cn-north-1",
            "image": world.image.name,
            "ssh_key_ids": [world.ssh_key.pk],
        },
    )
    assert page.status_code == 403
    assert 'href="/organization/verification/"' in page.content.decode()
    assert not world.org.instances.exists()
    # submitted is not enough; approved is
    verification = submit_individual(world.org, world.owner)
    assert owner_api.post("/api/v1/instances", body, format="json").status_code == 403
    services.verification_approve(
        actor=operator(reviewer(), world.org), verification_id=verification.pk
    )
    assert owner_api.post("/api/v1/instances", body, format="json").status_code == 201


def test_a_launch_outside_china_needs_no_verification(db):
    world = World()
    instance, created = compute_services.instance_launch(
        actor=world.actor(), request=world.request()
    )
    assert created and instance.region.country == "US"


def test_starting_in_china_is_refused_once_revoked(db, simulated_backend):
    simulated_backend(boot_seconds=0, stop_seconds=0)
    world = china_world()
    staff = reviewer()
    verification = submit_individual(world.org, world.owner)
    services.verification_approve(actor=operator(staff, world.org), verification_id=verification.pk)
    instance, _ = compute_services.instance_launch(actor=world.actor(), request=world.request())
    settle(instance)
    compute_services.instance_action(actor=world.actor(), instance_id=instance.pk, action="stop")
    settle(instance)
    assert instance.state == "stopped"
    services.verification_revoke(
        actor=operator(staff, world.org), verification_id=verification.pk, reason="Expired"
    )
    with pytest.raises(PermissionDenied) as refused:
        compute_services.instance_action(
            actor=world.actor(), instance_id=instance.pk, action="start"
        )
    assert refused.value.code == "verification_required"


def test_special_vat_invoices_need_an_enterprise(db):
    org = factories.organization()
    owner = factories.member(org, "owner")
    with pytest.raises(PermissionDenied) as refused:
        services.verification_required(org, "fapiao_special")
    assert refused.value.code == "verification_required"
    assert refused.value.details["required"] == ["enterprise"]
    verification = submit_individual(org, owner)
    services.verification_approve(actor=operator(reviewer(), org), verification_id=verification.pk)
    with pytest.raises(PermissionDenied):
        services.verification_required(org, "fapiao_special")  # an individual is not enough
    org.verified_as = "enterprise"
    org.save(update_fields=["verified_as"])
    services.verification_required(org, "fapiao_special")
    services.verification_required(org, "something.unlisted")  # the policy asks nothing


def _launch_queries(world, name, hooks=None) -> int:
    from django.test.utils import override_settings

    checks = settings.COMPUTE_LAUNCH_CHECKS if hooks is None else hooks
    with override_settings(COMPUTE_LAUNCH_CHECKS=checks), factories.QueryCounter() as counted:
        compute_services.instance_launch(actor=world.actor(), request=world.request(name))
    return counted.n


def test_the_check_costs_no_query_outside_china_and_one_inside(db):
    without = [p for p in settings.COMPUTE_LAUNCH_CHECKS if "verification" not in p]
    world = World()
    _launch_queries(world, "warm-up")
    assert _launch_queries(world, "a") == _launch_queries(world, "b", hooks=without)
    china = china_world()
    verification = submit_individual(china.org, china.owner)
    services.verification_approve(
        actor=operator(reviewer(), china.org), verification_id=verification.pk
    )
    _launch_queries(china, "warm-up")
    assert _launch_queries(china, "c") == _launch_queries(china, "d", hooks=without) + 1


def test_organisation_settings_link_to_the_verification_page(db):
    _org, _owner, client = owner_client()
    page = client.get("/settings/").content.decode()
    assert 'href="/organization/verification/"' in page


def test_documents_bytes_are_recognised():
    assert services.document_type(io.BytesIO(PDF)) == "application/pdf"
    assert services.document_type(io.BytesIO(PNG)) == "image/png"
    assert services.document_type(io.BytesIO(b"\xff\xd8\xff\xdb")) == "image/jpeg"
    assert services.document_type(io.BytesIO(b"MZ\x90\x00")) is None


def test_a_key_that_is_not_a_fernet_key_fails_the_system_check(settings):
    from portal.accounts.checks import identity_encryption_key_valid

    assert identity_encryption_key_valid(None) == []
    settings.IDENTITY_ENCRYPTION_KEY = "not-a-key"
    assert [e.id for e in identity_encryption_key_valid(None)] == ["accounts.E002"]


def test_a_malformed_policy_fails_the_system_check(settings):
    from portal.accounts.checks import verification_policy_valid

    assert verification_policy_valid(None) == []
    settings.VERIFICATION_POLICY = {"instance.launch": {"kinds": ["company"], "countries": "CN"}}
    assert [e.id for e in verification_policy_valid(None)] == ["accounts.E003"]


def test_the_lookup_hash_survives_a_key_rotation_with_its_own_key(settings):
    settings.IDENTITY_HASH_KEY = "a-long-secret-that-keys-the-identity-hash"
    before = services.identity_number_hash(PERSON_ID)
    settings.IDENTITY_ENCRYPTION_KEY = (
        f"{Fernet.generate_key().decode()},{settings.IDENTITY_ENCRYPTION_KEY}"
    )
    assert services.identity_number_hash(PERSON_ID) == before
    settings.IDENTITY_HASH_KEY = ""
    assert services.identity_number_hash(PERSON_ID) != before


def test_an_individual_may_ask_to_become_an_enterprise_and_stays_verified_meanwhile(db):
    org = factories.organization()
    owner = factories.member(org, "owner")
    staff = reviewer()
    individual = submit_individual(org, owner)
    services.verification_approve(actor=operator(staff, org), verification_id=individual.pk)
    upgrade = services.verification_submit(
        actor=factories.actor(org, owner),
        submission=services.Submission(
            kind="enterprise",
            name="Acme",
            id_number=AGENT_ID,
            credit_code=CREDIT_CODE,
            authorized_person_name="李四",
            business_licence=licence(),
        ),
    )
    org.refresh_from_db()
    assert org.verified_as == "individual"  # still, while the enterprise one is reviewed
    services.verification_reject(
        actor=operator(staff, org), verification_id=upgrade.pk, reason="Blurred licence"
    )
    org.refresh_from_db()
    assert org.verified_as == "individual"
    services.verification_required(org, "instance.launch")  # still allowed
    with pytest.raises(PermissionDenied):
        services.verification_required(org, "fapiao_special")


def test_an_old_approval_is_not_revoked_over_a_newer_approved_one(db):
    org = factories.organization()
    owner = factories.member(org, "owner")
    staff = reviewer()
    individual = submit_individual(org, owner)
    services.verification_approve(actor=operator(staff, org), verification_id=individual.pk)
    upgrade = services.verification_submit(
        actor=factories.actor(org, owner),
        submission=services.Submission(
            kind="enterprise",
            name="Acme",
            id_number=AGENT_ID,
            credit_code=CREDIT_CODE,
            authorized_person_name="李四",
            business_licence=licence(),
        ),
    )
    services.verification_approve(actor=operator(staff, org), verification_id=upgrade.pk)
    with pytest.raises(Conflict):
        services.verification_revoke(
            actor=operator(staff, org), verification_id=individual.pk, reason="Old"
        )
    org.refresh_from_db()
    assert org.verified_as == "enterprise"
