"""Every role through every action, in pages and the API; and another organisation's objects
answer 404 everywhere.

The expected roles below are written out by hand, not read from the matrix in code, so a change
to the matrix that nobody meant fails here as well as a missing check in a view.
"""

from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from portal.accounts import services
from portal.accounts.models import ApiKey, AuditEvent, Invitation, Membership, Organization, SshKey
from portal.accounts.roles import MATRIX, Action, Role
from portal.accounts.types import Actor
from portal.compute.models import Volume
from tests import factories

ALL = {"owner", "admin", "member", "billing", "viewer"}
MANAGERS = {"owner", "admin"}
BUILDERS = {"owner", "admin", "member"}
KEY_HOLDERS = {"owner", "admin", "member", "billing"}
BILLING_READERS = {"owner", "admin", "billing"}
BILLING_MANAGERS = {"owner", "billing"}


@dataclass
class World:
    org: object
    objects: dict


def build_world(org=None) -> World:
    """An organisation with one of each object an action can target."""
    org = org or factories.organization()
    factories.member(org, "owner")  # keeps an owner whatever the acting role does
    system = Actor.system(org)
    ssh_key = services.ssh_key_create(actor=system, public_key=factories.ed25519_public_key())
    api_key, _ = services.api_key_create(actor=system, name="target", role="viewer")
    invitation = Invitation.objects.create(
        organization=org,
        email=f"invitee-{org.pk}@example.com",
        role="viewer",
        token_hash=f"{org.pk:064d}",
        expires_at=api_key.created_at.replace(year=api_key.created_at.year + 1),
    )
    viewer = Membership.objects.get(user=factories.member(org, "viewer"))
    instance, volume = _compute_objects(org)
    card, invoice, checkout = _billing_objects(org)
    from billing.models import Payment

    wallet_payment = Payment.objects.create(
        organization=org, purpose="top_up", amount=300, currency="CNY", status="pending",
        provider="alipay", idempotency_key=f"wallet-{org.pk}", checkout_id=f"GCW{org.pk:09d}",
        qr_payload="https://qr.alipay.com/bax00000",
    )  # fmt: skip
    from billing.models import CreditRequest

    credit_request = CreditRequest.objects.create(
        organization=org, company_name=org.name, registration_number="HRB 1", address="Berlin",
        contact_name="Finance", contact_email="finance@example.com", expected_monthly_spend=1000,
        currency="USD",
    )  # fmt: skip
    notice = _bank_transfer_notice(org)
    fapiao_request = _fapiao_request(org)
    return World(
        org=org,
        objects={
            "ssh_key": ssh_key.pk,
            "api_key": api_key.pk,
            "invitation": invitation.pk,
            "membership": viewer.pk,
            "instance": instance.pk,
            "volume": volume.pk,
            "card": card.pk,
            "invoice": invoice.pk,
            "checkout": checkout,
            "credit_request": credit_request.pk,
            "notice": notice.pk,
            "wallet_payment": wallet_payment.pk,
            "fapiao": fapiao_request.pk,
            "cluster": _cluster(instance).pk,
        },
    )


def _cluster(instance):
    """A running cluster whose one node is ``instance``'s sibling (no backend job: terminate
    only records the request)."""
    from portal.compute.models import Cluster

    return Cluster.objects.create(
        organization=instance.organization, name=f"c{instance.pk}",
        instance_type=instance.instance_type, region=instance.region, node_count=1,
        state="running", backend=instance.backend,
    )  # fmt: skip


def _bank_transfer_notice(org):
    """A bank transfer notice with its slip stored."""
    from django.core.files.base import ContentFile

    from billing.models import BankTransferNotice
    from billing.transfers import slips

    path = slips.storage().save(f"{org.pk}/slip.pdf", ContentFile(b"%PDF-1.7\n%%EOF\n"))
    return BankTransferNotice.objects.create(
        organization=org, reference="GC2222222A", amount=100, currency=org.currency,
        sent_on="2026-11-30", payer_name=org.name, slip_name="slip.pdf", slip_path=path,
        slip_content_type="application/pdf",
    )  # fmt: skip


def _fapiao_request(org):
    """An issued fapiao request with its file stored."""
    from django.core.files.base import ContentFile

    from billing.fapiao import files
    from billing.models import FapiaoRequest

    path = files.storage().save(f"{org.pk}/fapiao.pdf", ContentFile(b"%PDF-1.7\n%%EOF\n"))
    return FapiaoRequest.objects.create(
        organization=org, kind="ordinary", currency="CNY", amount=100, net="94.34", tax="5.66",
        buyer_title=org.name, buyer_tax_id="91110108MA01ABCD1E", status="issued",
        number=f"{org.pk:020d}", issued_on="2026-11-30", issued_net="94.34", issued_tax="5.66",
        issued_total=100, file_name="fapiao.pdf", file_path=path,
        file_content_type="application/pdf",
    )  # fmt: skip


def _billing_objects(org):
    """Two saved cards (the second is the target), a finalized invoice, and the fake provider's
    checkout page (its signed token) for a pending top-up."""
    from django.core import signing

    from billing.models import Invoice, Payment, PaymentMethod
    from billing.payments.fake import SALT

    PaymentMethod.objects.create(
        organization=org, provider="fake", provider_id=f"fakepm_visa_1111_01_2040_{org.pk}a",
        brand="visa", last4="1111", exp_month=1, exp_year=2040, is_default=True,
    )  # fmt: skip
    card = PaymentMethod.objects.create(
        organization=org, provider="fake", provider_id=f"fakepm_visa_4242_01_2040_{org.pk}b",
        brand="visa", last4="4242", exp_month=1, exp_year=2040,
    )  # fmt: skip
    invoice = Invoice.objects.create(
        organization=org, period_start="2026-01-01", period_end="2026-02-01", currency="USD",
        billing_mode="prepaid", status="paid", number=f"INV-2026-{org.pk:06d}",
        tax_status="standard", subtotal=12, total=12, credits_applied=12,
        seller={"name": "GPU Cloud", "country": "DE"}, buyer={"name": org.name, "country": "FR"},
        issued_at="2026-02-01T00:05Z", due_at="2026-02-01T00:05Z", paid_at="2026-02-01T00:05Z",
    )  # fmt: skip
    payment = Payment.objects.create(
        organization=org, purpose="top_up", amount=25, currency="USD", status="pending",
        provider="fake", idempotency_key=f"top-up-{org.pk}",
    )  # fmt: skip
    checkout = signing.dumps(
        {"mode": "payment", "payment": payment.pk, "cs": f"fakecs_{org.pk}", "ok": "/billing/",
         "back": "/billing/"},
        salt=SALT,
    )  # fmt: skip
    return card, invoice, checkout


def profile_has(w, **fields) -> bool:
    from billing.models import BillingProfile

    return BillingProfile.objects.filter(organization=w.org, **fields).exists()


def credit_request_status(w) -> str:
    from billing.models import CreditRequest

    return CreditRequest.objects.get(pk=w.objects["credit_request"]).status


def card_state(w):
    from billing.models import PaymentMethod

    return PaymentMethod.objects.get(pk=w.objects["card"])


def _compute_objects(org):
    """A running instance and a detached volume, made directly: only ownership matters here."""
    from portal.catalog.models import GpuModel, Image, InstanceType, Region
    from portal.compute.models import Instance, Volume

    model, _ = GpuModel.objects.get_or_create(
        code="test-gpu", defaults={"name": "TestGPU", "memory_gb": 80}
    )
    region, _ = Region.objects.get_or_create(code="test-region", defaults={"name": "Test"})
    itype, _ = InstanceType.objects.get_or_create(
        name="test_1x", defaults={"gpu_model": model, "gpu_count": 1, "vcpus": 1, "ram_gib": 1}
    )
    image, _ = Image.objects.get_or_create(name="test-image", defaults={"os": "Ubuntu 24.04"})
    instance = Instance.objects.create(
        organization=org,
        name=f"vm-{org.pk}",
        instance_type=itype,
        region=region,
        image=image,
        disk_gb=10,
        backend="simulated",
        state="running",
        ip_address="10.0.0.5",
    )
    volume = Volume.objects.create(
        organization=org, region=region, name=f"vol-{org.pk}", size_gb=10
    )
    return instance, volume


def instance_state(w):
    from portal.compute.models import Instance

    return Instance.objects.get(pk=w.objects["instance"])


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str  # may name an object: {ssh_key}, {api_key}, {invitation}, {membership}
    allowed: frozenset
    ok: int
    action: Action
    data: dict | None = None
    api: bool = False
    effect: object = None  # (world) -> bool: did the write happen?

    def url(self, objects: dict) -> str:
        return self.path.format(**objects)


def op(name, method, path, allowed, ok, action, data=None, api=False, effect=None) -> Op:
    return Op(name, method, path, frozenset(allowed), ok, action, data, api, effect)


def ssh_keys(w):
    return SshKey.objects.filter(organization=w.org).count()


def ssh_key_gone(w):
    return not SshKey.objects.filter(pk=w.objects["ssh_key"]).exists()


def api_key_revoked(w):
    return ApiKey.objects.get(pk=w.objects["api_key"]).revoked_at is not None


def invitation(w):
    return Invitation.objects.get(pk=w.objects["invitation"])


def membership_role(w):
    return (
        Membership.objects.filter(pk=w.objects["membership"]).values_list("role", flat=True).first()
    )


NEW_KEY = {"public_key": "placeholder"}
API_OPS = [
    op("api organization", "GET", "/api/v1/organization", ALL, 200, Action.ORG_VIEW, api=True),
    op("api members", "GET", "/api/v1/members", ALL, 200, Action.MEMBER_VIEW, api=True),
    op("api verification", "GET", "/api/v1/verification", ALL, 200, Action.ORG_VIEW, api=True),
    # owners only; an empty submission is then refused for its fields
    op(
        "api verification submit",
        "POST",
        "/api/v1/verification",
        {"owner"},
        400,
        Action.ORG_VERIFY,
        {"kind": "individual"},
        api=True,
    ),
    op("api ssh list", "GET", "/api/v1/ssh-keys", ALL, 200, Action.SSH_KEY_VIEW, api=True),
    op("api ssh get", "GET", "/api/v1/ssh-keys/{ssh_key}", ALL, 200, Action.SSH_KEY_VIEW, api=True),
    op(
        "api ssh add",
        "POST",
        "/api/v1/ssh-keys",
        BUILDERS,
        201,
        Action.SSH_KEY_MANAGE,
        NEW_KEY,
        True,
    ),
    op(
        "api ssh delete",
        "DELETE",
        "/api/v1/ssh-keys/{ssh_key}",
        BUILDERS,
        204,
        Action.SSH_KEY_MANAGE,
        api=True,
    ),
    op("api audit", "GET", "/api/v1/audit-events", MANAGERS, 200, Action.AUDIT_VIEW, api=True),
    op("api instances", "GET", "/api/v1/instances", ALL, 200, Action.INSTANCE_VIEW, api=True),
    op(
        "api instance get",
        "GET",
        "/api/v1/instances/{instance}",
        ALL,
        200,
        Action.INSTANCE_VIEW,
        api=True,
    ),
    op(
        "api instance events",
        "GET",
        "/api/v1/instances/{instance}/events",
        ALL,
        200,
        Action.INSTANCE_VIEW,
        api=True,
    ),
    op(
        "api instance auto-stop",
        "PATCH",
        "/api/v1/instances/{instance}/auto-stop",
        BUILDERS,
        200,
        Action.INSTANCE_MANAGE,
        {"idle_stop_enabled": True, "idle_stop_minutes": 45},
        True,
        effect=lambda w: instance_state(w).idle_stop_enabled,
    ),
    op(
        "api instance rename",
        "PATCH",
        "/api/v1/instances/{instance}",
        BUILDERS,
        200,
        Action.INSTANCE_MANAGE,
        {"name": "renamed"},
        True,
        effect=lambda w: instance_state(w).name == "renamed",
    ),
    *(
        op(
            f"api instance {a}",
            "POST",
            f"/api/v1/instances/{{instance}}/{a}",
            BUILDERS,
            202,
            Action.INSTANCE_MANAGE,
            api=True,
            effect=lambda w, s=s: instance_state(w).state == s,
        )
        for a, s in (("stop", "stopping"), ("reboot", "rebooting"), ("terminate", "terminating"))
    ),
    op("api volumes", "GET", "/api/v1/volumes", ALL, 200, Action.INSTANCE_VIEW, api=True),
    op("api clusters", "GET", "/api/v1/clusters", ALL, 200, Action.INSTANCE_VIEW, api=True),
    op(
        "api cluster", "GET", "/api/v1/clusters/{cluster}", ALL, 200, Action.INSTANCE_VIEW, api=True
    ),
    op(
        "api cluster launch",
        "POST",
        "/api/v1/clusters",
        BUILDERS,
        400,
        Action.INSTANCE_MANAGE,
        {},
        True,
    ),
    op(
        "api cluster terminate",
        "POST",
        "/api/v1/clusters/{cluster}/terminate",
        BUILDERS,
        202,
        Action.INSTANCE_MANAGE,
        api=True,
    ),
    # permission is checked before the body: allowed roles get the validation error
    op("api launch", "POST", "/api/v1/instances", BUILDERS, 400, Action.INSTANCE_MANAGE, {}, True),
    op(
        "api instance start",
        "POST",
        "/api/v1/instances/{instance}/start",
        BUILDERS,
        409,  # it is running: invalid_transition
        Action.INSTANCE_MANAGE,
        api=True,
    ),
    *(
        op(f"api {name}", "GET", f"/api/v1/{name}", ALL, 200, Action.ORG_VIEW, api=True)
        for name in ("instance-types", "regions", "images", "gpu-models")
    ),
    op("api usage", "GET", "/api/v1/usage", ALL, 200, Action.INSTANCE_VIEW, api=True),
    op(
        "api usage events",
        "POST",
        "/api/v1/usage-events",
        BUILDERS,
        400,
        Action.INSTANCE_MANAGE,
        {},
        True,
    ),
    op(
        "api balance", "GET", "/api/v1/balance", BILLING_READERS, 200, Action.BILLING_VIEW, api=True
    ),
    op("api ledger", "GET", "/api/v1/ledger", BILLING_READERS, 200, Action.BILLING_VIEW, api=True),
    op(
        "api spend limit",
        "GET",
        "/api/v1/spend-limit",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api spend limit set",
        "PUT",
        "/api/v1/spend-limit",
        BILLING_MANAGERS,
        200,
        Action.BILLING_MANAGE,
        {"monthly_spend_limit": "900", "mode": "alert"},
        True,
        effect=lambda w: profile_has(w, monthly_spend_limit=900, spend_limit_mode="alert"),
    ),
    op(
        "api top-up",
        "POST",
        "/api/v1/top-ups",
        BILLING_MANAGERS,
        201,
        Action.BILLING_MANAGE,
        {"amount": "50", "method": "card"},
        True,
    ),
    op(
        "api payment",
        "GET",
        "/api/v1/payments/{wallet_payment}",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api fapiao requests",
        "GET",
        "/api/v1/fapiao-requests",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api fapiao request create",
        "POST",
        "/api/v1/fapiao-requests",
        BILLING_MANAGERS,
        400,
        Action.BILLING_MANAGE,
        {"kind": "ordinary"},
        True,
    ),  # no invoices, no buyer
    op(
        "api fapiao request",
        "GET",
        "/api/v1/fapiao-requests/{fapiao}",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api fapiao file",
        "GET",
        "/api/v1/fapiao-requests/{fapiao}/file",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api bank transfer reference",
        "GET",
        "/api/v1/bank-transfers/reference",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api bank transfers",
        "GET",
        "/api/v1/bank-transfers",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api bank transfer notice",
        "POST",
        "/api/v1/bank-transfers",
        BILLING_MANAGERS,
        400,  # no slip in a JSON body
        Action.BILLING_MANAGE,
        {"amount": "1", "sent_on": "2026-11-30", "payer_name": "x"},
        True,
    ),
    op(
        "api credit requests",
        "GET",
        "/api/v1/credit-requests",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api credit request",
        "POST",
        "/api/v1/credit-requests",
        BILLING_MANAGERS,
        409,  # one is pending already: credit_request_pending
        Action.BILLING_MANAGE,
        {
            "company_name": "x",
            "registration_number": "1",
            "address": "a",
            "contact_name": "c",
            "contact_email": "c@example.com",
            "expected_monthly_spend": "10",
        },
        True,
    ),
    op(
        "api invoices",
        "GET",
        "/api/v1/invoices",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api invoice get",
        "GET",
        "/api/v1/invoices/{invoice}",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api invoice pdf",
        "GET",
        "/api/v1/invoices/{invoice}/pdf",
        BILLING_READERS,
        200,
        Action.BILLING_VIEW,
        api=True,
    ),
    op(
        "api volume delete",
        "DELETE",
        "/api/v1/volumes/{volume}",
        BUILDERS,
        204,
        Action.INSTANCE_MANAGE,
        api=True,
        effect=lambda w: (
            not Volume.objects.filter(pk=w.objects["volume"]).exclude(state="deleted").exists()
        ),
    ),
]
PAGE_OPS = [
    op("dashboard", "GET", "/", ALL, 200, Action.ORG_VIEW),
    op("ssh page", "GET", "/ssh-keys/", ALL, 200, Action.SSH_KEY_VIEW),
    op("ssh add", "POST", "/ssh-keys/", BUILDERS, 302, Action.SSH_KEY_MANAGE, NEW_KEY,
       effect=lambda w: ssh_keys(w) == 2),
    op("ssh delete", "POST", "/ssh-keys/{ssh_key}/delete/", BUILDERS, 302, Action.SSH_KEY_MANAGE,
       effect=ssh_key_gone),
    op("api keys page", "GET", "/api-keys/", KEY_HOLDERS, 200, Action.API_KEY_VIEW),
    op("api key add", "POST", "/api-keys/", KEY_HOLDERS, 302, Action.API_KEY_MANAGE, {"name": "new", "role": "viewer"},
       effect=lambda w: ApiKey.objects.filter(organization=w.org, name="new").exists()),
    op("api key revoke", "POST", "/api-keys/{api_key}/revoke/", KEY_HOLDERS, 302, Action.API_KEY_MANAGE,
       effect=api_key_revoked),
    op("members page", "GET", "/members/", ALL, 200, Action.MEMBER_VIEW),
    op("invite", "POST", "/invitations/", MANAGERS, 302, Action.MEMBER_INVITE, {"email": "x@example.com", "role": "viewer"},
       effect=lambda w: Invitation.objects.filter(organization=w.org, email="x@example.com").exists()),
    op("invite resend", "POST", "/invitations/{invitation}/resend/", MANAGERS, 302, Action.MEMBER_INVITE,
       effect=lambda w: invitation(w).token_hash != f"{w.org.pk:064d}"),
    op("invite revoke", "POST", "/invitations/{invitation}/revoke/", MANAGERS, 302, Action.MEMBER_INVITE,
       effect=lambda w: invitation(w).revoked_at is not None),
    op("change role", "POST", "/members/{membership}/role/", {"owner"}, 302, Action.MEMBER_CHANGE_ROLE, {"role": "member"},
       effect=lambda w: membership_role(w) == "member"),
    op("remove member", "POST", "/members/{membership}/remove/", MANAGERS, 302, Action.MEMBER_REMOVE,
       effect=lambda w: membership_role(w) is None),
    op("settings page", "GET", "/settings/", ALL, 200, Action.ORG_VIEW),
    op("settings save", "POST", "/settings/", MANAGERS, 302, Action.ORG_UPDATE,
       {"name": "New name", "billing_email": "b@example.com", "country": "FR", "currency": "USD"},
       effect=lambda w: Organization.objects.filter(pk=w.org.pk, name="New name").exists()),
    # The world has a running instance and a volume, so even the owner is refused (422, with
    # organization_not_empty); tests/accounts/test_services.py deletes an empty organisation.
    op("org delete", "POST", "/settings/delete/", {"owner"}, 422, Action.ORG_DELETE, {"confirm_slug": "{slug}"}),
    op("audit page", "GET", "/audit/", MANAGERS, 200, Action.AUDIT_VIEW),
    op("verification page", "GET", "/organization/verification/", ALL, 200, Action.ORG_VIEW),
    op("verification submit", "POST", "/organization/verification/", {"owner"}, 422, Action.ORG_VERIFY,
       {"kind": "individual"}),
    # the world has no verification, so the owner gets 404 (tests/accounts/test_verification.py
    # downloads real documents)
    op("verification licence", "GET", "/organization/verification/licence/", {"owner"}, 404,
       Action.ORG_VERIFY),
    op("verification letter", "GET", "/organization/verification/authorization-letter/", {"owner"},
       404, Action.ORG_VERIFY),
    op("instances page", "GET", "/instances/", ALL, 200, Action.INSTANCE_VIEW),
    op("instance page", "GET", "/instances/{instance}/", ALL, 200, Action.INSTANCE_VIEW),
    op("instance row", "GET", "/instances/{instance}/row/", ALL, 302, Action.INSTANCE_VIEW),
    op("launch page", "GET", "/instances/launch/", BUILDERS, 200, Action.INSTANCE_MANAGE),
    # permission is checked before the form: allowed roles see the form's errors
    op("launch", "POST", "/instances/launch/", BUILDERS, 422, Action.INSTANCE_MANAGE, {"name": ""}),
    op("usage page", "GET", "/usage/", ALL, 200, Action.INSTANCE_VIEW),
    op("usage export", "GET", "/usage/export.csv", ALL, 200, Action.INSTANCE_VIEW),
    op("instance rename", "POST", "/instances/{instance}/rename/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       {"name": "renamed"}, effect=lambda w: instance_state(w).name == "renamed"),
    op("instance auto-stop", "POST", "/instances/{instance}/auto-stop/", BUILDERS, 302,
       Action.INSTANCE_MANAGE, {"idle_stop_enabled": "on", "idle_stop_minutes": "45"},
       effect=lambda w: instance_state(w).idle_stop_minutes == 45),
    op("instance stop", "POST", "/instances/{instance}/stop/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       effect=lambda w: instance_state(w).state == "stopping"),
    op("instance reboot", "POST", "/instances/{instance}/reboot/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       effect=lambda w: instance_state(w).state == "rebooting"),
    op("instance terminate", "POST", "/instances/{instance}/terminate/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       {"confirm_name": "{instance_name}"}, effect=lambda w: instance_state(w).state == "terminating"),
    op("volumes page", "GET", "/volumes/", ALL, 200, Action.INSTANCE_VIEW),
    op("volume add", "POST", "/volumes/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       {"name": "scratch", "region": "test-region", "size_gb": 10},
       effect=lambda w: Volume.objects.filter(organization=w.org, name="scratch").exists()),
    op("volume delete", "POST", "/volumes/{volume}/delete/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       effect=lambda w: not Volume.objects.filter(pk=w.objects["volume"]).exclude(state="deleted").exists()),
    op("billing page", "GET", "/billing/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("payments page", "GET", "/billing/payments/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("top up", "POST", "/billing/top-up/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE, {"amount": "50"},
       effect=lambda w: w.org.payments.filter(amount=50).exists()),
    op("add card", "POST", "/billing/cards/add/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE),
    op("card default", "POST", "/billing/cards/{card}/default/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       effect=lambda w: card_state(w).is_default),
    op("card remove", "POST", "/billing/cards/{card}/remove/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       effect=lambda w: card_state(w).removed_at is not None),
    op("spend limit", "POST", "/billing/spend-limit/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE, {"limit": "900"},
       effect=lambda w: profile_has(w, monthly_spend_limit=900)),
    op("monthly invoicing page", "GET", "/billing/monthly-invoicing/", BILLING_MANAGERS, 200,
       Action.BILLING_MANAGE),
    op("monthly invoicing withdraw", "POST", "/billing/monthly-invoicing/{credit_request}/withdraw/",
       BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       effect=lambda w: credit_request_status(w) == "withdrawn"),
    op("auto-recharge", "POST", "/billing/auto-recharge/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       {"enabled": "on", "threshold": "10", "amount": "50"},
       effect=lambda w: profile_has(w, auto_recharge_enabled=True)),
    op("bank transfer page", "GET", "/billing/bank-transfer/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("bank transfer notice", "POST", "/billing/bank-transfer/", BILLING_MANAGERS, 422,  # no slip
       Action.BILLING_MANAGE, {"amount": "1", "sent_on": "2026-11-30", "payer_name": "x"}),
    op("bank transfer slip", "GET", "/billing/bank-transfer/notices/{notice}/slip/", BILLING_READERS, 200,
       Action.BILLING_VIEW),
    op("fapiao page", "GET", "/billing/fapiao/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("fapiao request", "POST", "/billing/fapiao/", BILLING_MANAGERS, 422, Action.BILLING_MANAGE,
       {"kind": "ordinary"}),  # no invoice, no buyer
    op("fapiao request page", "GET", "/billing/fapiao/{fapiao}/", BILLING_READERS, 200,
       Action.BILLING_VIEW),
    op("fapiao file", "GET", "/billing/fapiao/{fapiao}/file/", BILLING_READERS, 200,
       Action.BILLING_VIEW),
    op("wallet pay page", "GET", "/billing/pay/{wallet_payment}/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("wallet pay status", "GET", "/billing/pay/{wallet_payment}/status/", BILLING_READERS, 200,
       Action.BILLING_VIEW),
    op("invoice page", "GET", "/billing/invoices/{invoice}/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("invoice pdf", "GET", "/billing/invoices/{invoice}/pdf/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("invoice ubl", "GET", "/billing/invoices/{invoice}/e-invoice/ubl/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("fake checkout", "GET", "/billing/checkout/fake/{checkout}/", BILLING_READERS, 200, Action.BILLING_VIEW),
]  # fmt: skip


def perform(client, operation: Op, world: World):
    data = dict(operation.data or {})
    if "public_key" in data:
        data["public_key"] = factories.ed25519_public_key()
    if data.get("confirm_slug") == "{slug}":
        data["confirm_slug"] = world.org.slug
    if data.get("confirm_name") == "{instance_name}":
        data["confirm_name"] = instance_state(world).name
    url = operation.url(world.objects)
    if operation.method == "GET":
        return client.get(url)
    if operation.method == "DELETE":
        return client.delete(url)
    if operation.method == "PATCH":
        return client.patch(url, data, format="json")
    if operation.method == "PUT":
        return client.put(url, data, format="json")
    if operation.api:
        return client.post(url, data, format="json")
    return client.post(url, data)


@pytest.mark.parametrize("operation", API_OPS + PAGE_OPS, ids=lambda o: o.name)
def test_hand_written_expectations_agree_with_the_matrix(operation):
    assert {role.value for role in Role if operation.action in MATRIX[role]} == operation.allowed


@pytest.mark.parametrize("role", sorted(ALL))
@pytest.mark.parametrize("operation", API_OPS, ids=lambda o: o.name)
def test_api_role_matrix(db, operation, role):
    world = build_world()
    client = factories.api_client_for(world.org, role)
    response = perform(client, operation, world)
    allowed = role in operation.allowed
    assert response.status_code == (operation.ok if allowed else 403), response.content[:300]
    if not allowed:
        assert response.json()["error"]["code"] == "permission_denied"
    if operation.effect is not None:
        assert operation.effect(world) is allowed


@pytest.mark.parametrize("role", sorted(ALL))
@pytest.mark.parametrize("operation", PAGE_OPS, ids=lambda o: o.name)
def test_page_role_matrix(db, operation, role):
    world = build_world()
    client = Client()
    client.force_login(factories.member(world.org, role))
    response = perform(client, operation, world)
    allowed = role in operation.allowed
    assert response.status_code == (operation.ok if allowed else 403), response.content[:300]
    if operation.effect is not None:
        assert operation.effect(world) is allowed


# --- isolation --------------------------------------------------------------------------------

FOREIGN_OBJECT_OPS = [o for o in API_OPS + PAGE_OPS if "{" in o.path]


@pytest.mark.parametrize("operation", FOREIGN_OBJECT_OPS, ids=lambda o: o.name)
def test_another_organizations_object_answers_404(db, operation):
    mine, theirs = build_world(), build_world()
    owner = factories.member(mine.org, "owner")
    if operation.api:
        client = factories.api_client_for(mine.org, "owner")
    else:
        client = Client()
        client.force_login(owner)
    response = perform(client, operation, World(org=mine.org, objects=theirs.objects))
    assert response.status_code == 404, response.content[:300]
    if operation.api:
        assert response.json()["error"]["code"] == "not_found"
    # Nothing of theirs changed.
    assert Membership.objects.get(pk=theirs.objects["membership"]).role == "viewer"
    invitation = Invitation.objects.get(pk=theirs.objects["invitation"])
    assert invitation.revoked_at is None
    assert invitation.token_hash == f"{theirs.org.pk:064d}"
    assert SshKey.objects.filter(pk=theirs.objects["ssh_key"]).exists()
    assert ApiKey.objects.get(pk=theirs.objects["api_key"]).revoked_at is None
    theirs_card = card_state(theirs)
    assert theirs_card.removed_at is None and not theirs_card.is_default
    assert credit_request_status(theirs) == "pending"


def test_lists_show_only_the_current_organizations_data(db):
    mine, theirs = build_world(), build_world()
    client = factories.api_client_for(mine.org, "owner")
    ids = {row["id"] for row in client.get("/api/v1/ssh-keys").json()["results"]}
    assert ids == {mine.objects["ssh_key"]}
    members = client.get("/api/v1/members").json()["results"]
    assert theirs.objects["membership"] not in {row["id"] for row in members}
    audit = {row["id"] for row in client.get("/api/v1/audit-events").json()["results"]}
    assert audit and audit <= set(
        AuditEvent.objects.filter(organization=mine.org).values_list("id", flat=True)
    )


# --- every route is swept -----------------------------------------------------------------------

# Routes outside the organisation role matrix, each with the reason. Everything else must be an
# operation above (or a finance route below), so a new route without a role/isolation test fails.
OUTSIDE_THE_MATRIX = {
    "healthz": "liveness probe: no data",
    "readyz": "readiness probe: no data",
    "metrics": "operators' metrics, token or loopback only (tests/test_observability.py)",
    "api/schema/": "the public API description",
    "api/docs/": "the public API documentation",
    "catalog/": "the public catalog, prices in the organisation's currency (tests/catalog)",
    "signup/": "before any organisation",
    "login/": "before any organisation",
    "logout/": "the session only",
    "language/": "the user's own language, no organisation (tests/test_i18n.py)",
    "verify-email/resend/": "the signed-in user's own address",
    "verify-email/<str:token>/": "addressed by a signed token",
    "password-reset/": "before signing in",
    "password-reset/sent/": "before signing in",
    "password-reset/<uidb64>/<token>/": "addressed by a signed token",
    "password-reset/complete/": "before signing in",
    "account/": "the signed-in user's own account",
    "account/password/": "the signed-in user's own account",
    "organizations/new/": "any signed-in user may create one",
    "organizations/switch/": "only to an organisation of one's own (tests/accounts/test_hardening.py)",
    "invitations/accept/": "addressed by the invitation's secret token",
    "invitations/accept/<str:token>/": "addressed by the invitation's secret token",
    "webhooks/<slug:provider_name>/": "payment providers, signature-checked (tests/billing)",
    "webhooks/alipay/": "Alipay's notifications, RSA2-checked (tests/billing/wallets)",
    "webhooks/wechatpay/": "WeChat Pay's notifications, signature-checked (tests/billing/wallets)",
    "machines/phone-home/<str:token>/": (
        "a machine's cloud-init, by its signed single-use URL (tests/compute/test_phone_home.py)"
    ),
}

FINANCE_OPS = [
    ("GET", "/finance/"),
    ("POST", "/finance/exports/"),
    ("GET", "/finance/exports/{job}/"),
    ("GET", "/finance/exports/{job}/download"),
    ("GET", "/finance/bank-transfers/"),
    ("POST", "/finance/bank-transfers/lines/"),
    ("POST", "/finance/bank-transfers/import/"),
    ("POST", "/finance/bank-transfers/lines/1/match/"),
    ("POST", "/finance/bank-transfers/lines/1/return/"),
    ("POST", "/finance/bank-transfers/notices/1/reject/"),
    ("GET", "/finance/bank-transfers/notices/1/slip/"),
    ("GET", "/finance/fapiao/"),
    ("POST", "/finance/fapiao/export/"),
    ("POST", "/finance/fapiao/1/issue/"),
    ("POST", "/finance/fapiao/1/reject/"),
    ("POST", "/finance/fapiao/red-letter/"),
    ("GET", "/finance/fapiao/1/file/"),
]


def _routes(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        pattern = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if pattern.startswith("admin/"):
                continue  # operators see every organisation by design (tests/*/test_admin.py)
            yield from _routes(entry, pattern)
        elif isinstance(entry, URLPattern):
            yield pattern


SAMPLE_IDS = {
    **dict.fromkeys(("ssh_key", "api_key", "invitation", "membership", "instance"), 1),
    **dict.fromkeys(
        ("volume", "card", "invoice", "job", "credit_request", "notice", "wallet_payment"), 1
    ),
    "fapiao": 1,
    "cluster": 1,
    "checkout": "token",
}


def _route_of(path: str) -> str:
    return resolve(path.format(**SAMPLE_IDS)).route


def test_every_route_is_in_the_role_matrix_or_says_why_not():
    routes = set(_routes())
    swept = {_route_of(o.path) for o in API_OPS + PAGE_OPS}
    swept |= {_route_of(path) for _, path in FINANCE_OPS}
    assert len(routes) > 60, "routes not found"
    unswept = routes - swept - set(OUTSIDE_THE_MATRIX)
    assert not unswept, f"routes without a role and isolation test: {sorted(unswept)}"
    assert set(OUTSIDE_THE_MATRIX) <= routes, "OUTSIDE_THE_MATRIX names a route that is gone"
    # every route that takes an organisation's object id is in the 404 sweep
    foreign = {_route_of(o.path) for o in FOREIGN_OBJECT_OPS}
    assert {r for r in swept if "<" in r and not r.startswith("finance/")} <= foreign


@pytest.mark.parametrize("role", sorted(ALL))
def test_the_finance_area_refuses_every_customer_role(db, role):
    """Finance staff see every organisation; no customer role, owner included, gets in, and a
    customer's request for another user's export job learns nothing."""
    from billing.models import ExportJob

    world = build_world()
    staff = factories.user(is_staff=True)
    job = ExportJob.objects.create(
        created_by=staff,
        kind="register",
        format="csv",
        params={"start": "2026-10", "end": "2026-10"},
    )
    client = Client()
    client.force_login(factories.member(world.org, role))
    for method, path in FINANCE_OPS:
        url = path.format(job=job.pk)
        data = {"kind": "register", "format": "csv", "start": "2026-10", "end": "2026-10"}
        response = client.get(url) if method == "GET" else client.post(url, data)
        assert response.status_code == 403, (url, response.status_code)
    assert ExportJob.objects.count() == 1
