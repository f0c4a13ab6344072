"""Row locks in the house order: organisation first (then ledger, hosts, instances)."""

from portal.accounts.models import Organization


def lock_organization(organization_id: int) -> None:
    """Take the organisation's row lock until the transaction ends (serialises its writes)."""
    list(
        Organization.objects.select_for_update()
        .filter(pk=organization_id)
        .values_list("pk", flat=True)
    )
