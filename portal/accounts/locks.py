"""Row locks in the house order: organisation first (then ledger, hosts, instances).

Plain SQL (``portal.sql``): every launch, start and membership change takes the lock."""

from django.db import connection

from portal.sql import rows

_LOCK_SQL = "SELECT id FROM accounts_organization WHERE id = %s"


def lock_organization(organization_id: int) -> None:
    """Take the organisation's row lock until the transaction ends (serialises its writes).
    (SQLite has no row locks: its writers run one at a time.)

    What is read under the lock is read by the statements after this one: a row read in the
    same statement as the lock would come from the snapshot taken before waiting for it."""
    sql = _LOCK_SQL
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    rows(sql, [organization_id])
