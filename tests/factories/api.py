"""An organisation with at least three of everything the API lists, for contract tests.

Callers need the in-memory provisioning backend (the ``memory_backend`` fixture).
"""

from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from billing.invoicing import services as invoicing
from portal.accounts import services as account_services
from portal.accounts.models import Organization
from portal.accounts.types import Actor
from portal.catalog import services as catalog_services
from portal.catalog.models import Image
from portal.compute import services as compute_services
from tests.factories import accounts as factories
from tests.factories.compute import World

# Enough rows for a list to have several pages at ``page_size=1``.
ROWS = 3


@dataclass
class ApiWorld:
    org: Organization
    # Ids of the organisation's objects, by the first segment of their API path.
    ids: dict[str, list[int]] = field(default_factory=dict)

    def key(self, role: str = "owner") -> str:
        return factories.api_key_secret(self.org, role)


def api_world() -> ApiWorld:
    """Instances (running, stopped, pending), volumes, SSH keys, members, ledger entries,
    invoices of three months, audit events; and a catalog of three regions and images."""
    world = World()
    org = world.org
    actor = world.actor()
    for code in ("eu-central-1", "ap-south-1"):
        catalog_services.region_ensure(code=code, name=code, country="DE")
    for name in ("ubuntu-24.04-cuda-13.0", "ubuntu-22.04-cuda-12.8"):
        Image.objects.create(name=name, os=name.split("-cuda")[0].replace("-", " ").title())
    for role in ("admin", "member", "billing", "viewer"):
        factories.member(org, role)
    ssh_keys = [world.ssh_key] + [
        account_services.ssh_key_create(
            actor=Actor.system(org), public_key=factories.ed25519_public_key(f"key{n}@laptop")
        )
        for n in range(ROWS - 1)
    ]

    def launched(name: str):
        instance, _ = compute_services.instance_launch(actor=actor, request=world.request(name))
        return instance

    running = launched("running")
    compute_services.instance_sync(instance_id=running.pk)  # pending → provisioning → running
    stopped = launched("stopped")
    compute_services.instance_sync(instance_id=stopped.pk)
    compute_services.instance_action(actor=actor, instance_id=stopped.pk, action="stop")
    compute_services.instance_sync(instance_id=stopped.pk)
    pending = launched("pending")
    volumes = [
        compute_services.volume_create(
            actor=actor, name=f"data-{n}", region=world.region.code, size_gb=100
        )
        for n in range(ROWS)
    ]
    from portal.compute.models import Cluster

    clusters = [
        Cluster.objects.create(
            organization=org,
            name=f"cluster-{n}",
            instance_type=running.instance_type,
            region=running.region,
            node_count=2,
            state="running",
            backend=running.backend,
        )
        for n in range(ROWS)
    ]
    for _ in range(ROWS - 1):
        factories.credit(org, "100")
    this_month = timezone.now().date().replace(day=1)
    months = [this_month]
    for _ in range(ROWS - 1):
        months.append((months[-1] - timedelta(days=1)).replace(day=1))
    invoices = [invoicing.invoice_draft_refresh(org, month) for month in months]
    from billing.models import CreditRequest

    credit_requests = [
        CreditRequest.objects.create(
            organization=org,
            company_name=org.name,
            registration_number=f"HRB {n}",
            address="Berlin",
            contact_name="Finance",
            contact_email="finance@example.com",
            expected_monthly_spend=1000 * (n + 1),
            currency=org.currency,
            status="pending" if n == 0 else "withdrawn",
        )
        for n in range(ROWS)
    ]
    from billing.models import BankTransferNotice

    bank_transfers = [  # rows only: the slips are not read by the list
        BankTransferNotice.objects.create(
            organization=org,
            reference="GC2222222A",
            amount=100 * (n + 1),
            currency=org.currency,
            sent_on=this_month,
            payer_name=org.name,
            slip_name=f"slip-{n}.pdf",
            slip_path=f"{org.pk}/missing-{n}.pdf",
            slip_content_type="application/pdf",
        )
        for n in range(ROWS)
    ]
    from billing.models import FapiaoRequest

    fapiao_requests = [  # rows only: the list reads their lines and covered invoices
        FapiaoRequest.objects.create(
            organization=org,
            kind="ordinary",
            currency="CNY",
            amount=100 * (n + 1),
            net=100 * (n + 1),
            tax=0,
            buyer_title=org.name,
            buyer_tax_id="91110108MA01ABCD1E",
        )
        for n in range(ROWS)
    ]
    return ApiWorld(
        org=org,
        ids={
            "instances": [running.pk, stopped.pk, pending.pk],
            "ssh-keys": [key.pk for key in ssh_keys],
            "volumes": [volume.pk for volume in volumes],
            "clusters": [cluster.pk for cluster in clusters],
            "invoices": [invoice.pk for invoice in invoices],
            "credit-requests": [request.pk for request in credit_requests],
            "bank-transfers": [notice.pk for notice in bank_transfers],
            "fapiao-requests": [request.pk for request in fapiao_requests],
        },
    )
