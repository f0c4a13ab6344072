"""Every role through every action, in pages and the API; and another organisation's objects
answer 404 everywhere.

The expected roles below are written out by hand, not read from the matrix in code, so a change
to the matrix that nobody meant fails here as well as a missing check in a view.
"""

from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

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
    card, invoice = _billing_objects(org)
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
        },
    )


def _billing_objects(org):
    """Two saved cards (the second is the target) and a finalized invoice."""
    from billing.models import Invoice, PaymentMethod

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
    )  # fmt: skip
    return card, invoice


def profile_has(w, **fields) -> bool:
    from billing.models import BillingProfile

    return BillingProfile.objects.filter(organization=w.org, **fields).exists()


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
    op(
        "api balance", "GET", "/api/v1/balance", BILLING_READERS, 200, Action.BILLING_VIEW, api=True
    ),
    op("api ledger", "GET", "/api/v1/ledger", BILLING_READERS, 200, Action.BILLING_VIEW, api=True),
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
       {"name": "New name", "billing_email": "b@example.com", "country": "FR", "currency": "USD", "billing_mode": "prepaid"},
       effect=lambda w: Organization.objects.filter(pk=w.org.pk, name="New name").exists()),
    # The world has a running instance and a volume, so even the owner is refused (422, with
    # organization_not_empty); tests/accounts/test_services.py deletes an empty organisation.
    op("org delete", "POST", "/settings/delete/", {"owner"}, 422, Action.ORG_DELETE, {"confirm_slug": "{slug}"}),
    op("audit page", "GET", "/audit/", MANAGERS, 200, Action.AUDIT_VIEW),
    op("instances page", "GET", "/instances/", ALL, 200, Action.INSTANCE_VIEW),
    op("instance page", "GET", "/instances/{instance}/", ALL, 200, Action.INSTANCE_VIEW),
    op("instance row", "GET", "/instances/{instance}/row/", ALL, 302, Action.INSTANCE_VIEW),
    op("launch page", "GET", "/instances/launch/", BUILDERS, 200, Action.INSTANCE_MANAGE),
    op("instance rename", "POST", "/instances/{instance}/rename/", BUILDERS, 302, Action.INSTANCE_MANAGE,
       {"name": "renamed"}, effect=lambda w: instance_state(w).name == "renamed"),
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
       effect=lambda w: w.org.payments.exists()),
    op("add card", "POST", "/billing/cards/add/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE),
    op("card default", "POST", "/billing/cards/{card}/default/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       effect=lambda w: card_state(w).is_default),
    op("card remove", "POST", "/billing/cards/{card}/remove/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       effect=lambda w: card_state(w).removed_at is not None),
    op("spend limit", "POST", "/billing/spend-limit/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE, {"limit": "900"},
       effect=lambda w: profile_has(w, monthly_spend_limit=900)),
    op("auto-recharge", "POST", "/billing/auto-recharge/", BILLING_MANAGERS, 302, Action.BILLING_MANAGE,
       {"enabled": "on", "threshold": "10", "amount": "50"},
       effect=lambda w: profile_has(w, auto_recharge_enabled=True)),
    op("invoice page", "GET", "/billing/invoices/{invoice}/", BILLING_READERS, 200, Action.BILLING_VIEW),
    op("invoice pdf", "GET", "/billing/invoices/{invoice}/pdf/", BILLING_READERS, 200, Action.BILLING_VIEW),
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


def _object_routes(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        pattern = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if pattern.startswith("admin/"):
                continue  # operators see every organisation by design
            yield from _object_routes(entry, pattern)
        elif isinstance(entry, URLPattern) and "<int:" in pattern:
            if pattern.startswith("finance/"):
                # finance staff see every organisation by design; their export jobs belong to
                # their creator (tests/billing/test_finance.py)
                continue
            yield pattern


def test_every_route_that_takes_an_object_id_is_in_the_isolation_table():
    covered = {o.path.lstrip("/").split("{")[0] for o in FOREIGN_OBJECT_OPS}
    routes = {route.split("<")[0] for route in _object_routes()}
    assert routes, "no routes found"
    assert routes <= covered, f"routes without an isolation test: {sorted(routes - covered)}"
