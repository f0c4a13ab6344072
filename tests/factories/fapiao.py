"""Fapiao scenarios: an organisation paying in CNY (25.00 CNY/h for ``gpu_1x_h200`` from
September 2026), its October invoice issued and paid, and a verified enterprise."""

from datetime import UTC, datetime
from decimal import Decimal

import time_machine

from billing.invoicing import services as invoicing
from portal.accounts.models import Organization, OrganizationVerification, VerificationKind
from portal.catalog import services as catalog_services
from tests.factories import billing
from tests.factories.compute import World

# A Unified Social Credit Code with a right check character (GB 32100-2015).
CREDIT_CODE = "91110108MA01ABCD1E"


def valid_code(first_17: str = CREDIT_CODE[:17]) -> str:
    from portal.accounts.identity import credit_code_check_character

    return first_17 + credit_code_check_character(first_17)


def cny_world(**org_fields) -> World:
    with time_machine.travel(datetime(2026, 9, 1, tzinfo=UTC), tick=False):
        world = World(currency="CNY", **org_fields)
        for name, price in (("gpu_1x_h200", "25.00"), ("gpu_2x_h200", "50.00")):
            catalog_services.price_set(
                instance_type=world.types[name],
                region=world.region,
                currency="CNY",
                on_demand_per_hour=Decimal(price),
            )
    return world


def paid_october(world: World, *, mode="invoiced", hours=10, tax="0"):
    """October's invoice, issued and paid (prepaid: from credits at issue)."""
    invoice = billing.issued(world, mode=mode, hours=hours, tax=tax, currency="CNY")
    if invoice.status != "paid":
        with time_machine.travel(billing.AFTER_CLOSE, tick=False):
            invoice = invoicing.invoice_mark_paid(
                invoice, reference="bank 2026-11-02", actor=billing.finance(world.org)
            )
    return invoice


def verify_enterprise(org: Organization, code: str | None = None) -> OrganizationVerification:
    code = code or valid_code()
    verification = OrganizationVerification.objects.create(
        organization=org,
        kind=VerificationKind.ENTERPRISE,
        status="approved",
        name=org.name,
        id_number_encrypted="x",
        id_number_hash="x" * 64,
        id_number_masked="1101**********1234",
        credit_code=code,
    )
    Organization.objects.filter(pk=org.pk).update(verified_as=VerificationKind.ENTERPRISE)
    org.refresh_from_db()
    return verification
