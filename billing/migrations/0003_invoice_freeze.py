"""Freeze issued invoices below the ORM: database triggers refuse

- an UPDATE of an issued invoice (status not 'draft') that changes its number, kind, parties,
  period, currency, amounts, tax, dates, references or (once set) its PDF, or moves its status
  anywhere but finalized -> paid | void. Still allowed: status finalized -> paid/void, paid_at,
  paid_reference, voided_at, amount_due, note, updated_at;
- a DELETE of an issued invoice;
- an INSERT, UPDATE or DELETE of a line of an issued invoice.

So a raw SQL statement or ``QuerySet.update()`` fails with an IntegrityError as surely as a form.
Finalizing writes the number, amounts and PDF in the same UPDATE that leaves 'draft'.

SQLite and PostgreSQL each get their own SQL (``schema_editor.connection.vendor``). On SQLite,
Django rebuilds a table to alter it, which drops its triggers: a later migration that alters
``billing_invoice`` or ``billing_invoiceline`` must run ``FORWARD[vendor]`` again
(``tests/billing/test_invoicing.py`` checks the triggers are there).
"""

from django.db import migrations

# Columns of an issued invoice that never change.
FROZEN = [
    "number",
    "kind",
    "organization_id",
    "corrects_id",
    "period_start",
    "period_end",
    "currency",
    "billing_mode",
    "tax_status",
    "tax_rate",
    "subtotal",
    "tax",
    "total",
    "credits_applied",
    "payment_reference",
    "seller",
    "buyer",
    "issued_at",
    "due_at",
    "created_at",
]

STATUS_MOVE_SQLITE = (
    "(NEW.status IS NOT OLD.status "
    "AND NOT (OLD.status = 'finalized' AND NEW.status IN ('paid', 'void')))"
)
STATUS_MOVE_PG = (
    "(NEW.status IS DISTINCT FROM OLD.status "
    "AND NOT (OLD.status = 'finalized' AND NEW.status IN ('paid', 'void')))"
)

SQLITE = [
    f"""
    CREATE TRIGGER billing_invoice_freeze_update BEFORE UPDATE ON billing_invoice
    FOR EACH ROW WHEN OLD.status <> 'draft' AND (
        {" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in FROZEN)}
        OR (OLD.pdf IS NOT NULL AND NEW.pdf IS NOT OLD.pdf)
        OR {STATUS_MOVE_SQLITE}
    )
    BEGIN
        SELECT RAISE(ABORT, 'billing_invoice_frozen: an issued invoice cannot be changed');
    END
    """,
    """
    CREATE TRIGGER billing_invoice_freeze_delete BEFORE DELETE ON billing_invoice
    FOR EACH ROW WHEN OLD.status <> 'draft'
    BEGIN
        SELECT RAISE(ABORT, 'billing_invoice_frozen: an issued invoice cannot be deleted');
    END
    """,
    """
    CREATE TRIGGER billing_invoiceline_freeze_insert BEFORE INSERT ON billing_invoiceline
    FOR EACH ROW WHEN (SELECT status FROM billing_invoice WHERE id = NEW.invoice_id) <> 'draft'
    BEGIN
        SELECT RAISE(ABORT, 'billing_invoiceline_frozen: the lines of an issued invoice cannot be changed');
    END
    """,
    """
    CREATE TRIGGER billing_invoiceline_freeze_update BEFORE UPDATE ON billing_invoiceline
    FOR EACH ROW WHEN (SELECT status FROM billing_invoice WHERE id = OLD.invoice_id) <> 'draft'
        OR (SELECT status FROM billing_invoice WHERE id = NEW.invoice_id) <> 'draft'
    BEGIN
        SELECT RAISE(ABORT, 'billing_invoiceline_frozen: the lines of an issued invoice cannot be changed');
    END
    """,
    """
    CREATE TRIGGER billing_invoiceline_freeze_delete BEFORE DELETE ON billing_invoiceline
    FOR EACH ROW WHEN (SELECT status FROM billing_invoice WHERE id = OLD.invoice_id) <> 'draft'
    BEGIN
        SELECT RAISE(ABORT, 'billing_invoiceline_frozen: the lines of an issued invoice cannot be changed');
    END
    """,
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS billing_invoice_freeze_update",
    "DROP TRIGGER IF EXISTS billing_invoice_freeze_delete",
    "DROP TRIGGER IF EXISTS billing_invoiceline_freeze_insert",
    "DROP TRIGGER IF EXISTS billing_invoiceline_freeze_update",
    "DROP TRIGGER IF EXISTS billing_invoiceline_freeze_delete",
]

POSTGRESQL = [
    f"""
    CREATE OR REPLACE FUNCTION billing_invoice_freeze() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            IF OLD.status <> 'draft' THEN
                RAISE EXCEPTION 'billing_invoice_frozen: issued invoice % cannot be deleted', OLD.number
                    USING ERRCODE = 'restrict_violation';
            END IF;
            RETURN OLD;
        END IF;
        IF OLD.status <> 'draft' AND (
            {" OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in FROZEN)}
            OR (OLD.pdf IS NOT NULL AND NEW.pdf IS DISTINCT FROM OLD.pdf)
            OR {STATUS_MOVE_PG}
        ) THEN
            RAISE EXCEPTION 'billing_invoice_frozen: issued invoice % cannot be changed', OLD.number
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER billing_invoice_freeze BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_freeze()
    """,
    """
    CREATE OR REPLACE FUNCTION billing_invoiceline_freeze() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        state text;
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            -- FOR SHARE waits for a finalize in progress, then reads its outcome
            SELECT status INTO state FROM billing_invoice WHERE id = OLD.invoice_id FOR SHARE;
            IF state IS NOT NULL AND state <> 'draft' THEN
                RAISE EXCEPTION 'billing_invoiceline_frozen: the lines of an issued invoice cannot be changed'
                    USING ERRCODE = 'restrict_violation';
            END IF;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            SELECT status INTO state FROM billing_invoice WHERE id = NEW.invoice_id FOR SHARE;
            IF state IS NOT NULL AND state <> 'draft' THEN
                RAISE EXCEPTION 'billing_invoiceline_frozen: the lines of an issued invoice cannot be changed'
                    USING ERRCODE = 'restrict_violation';
            END IF;
            RETURN NEW;
        END IF;
        RETURN OLD;
    END
    $$
    """,
    """
    CREATE TRIGGER billing_invoiceline_freeze BEFORE INSERT OR UPDATE OR DELETE
    ON billing_invoiceline FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_freeze()
    """,
]

POSTGRESQL_REVERSE = [
    "DROP TRIGGER IF EXISTS billing_invoiceline_freeze ON billing_invoiceline",
    "DROP FUNCTION IF EXISTS billing_invoiceline_freeze()",
    "DROP TRIGGER IF EXISTS billing_invoice_freeze ON billing_invoice",
    "DROP FUNCTION IF EXISTS billing_invoice_freeze()",
]

FORWARD = {"sqlite": SQLITE, "postgresql": POSTGRESQL}
REVERSE = {"sqlite": SQLITE_REVERSE, "postgresql": POSTGRESQL_REVERSE}


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor) -> None:
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_payments_spend_invoices"),
    ]

    operations = [
        migrations.RunPython(_run(FORWARD), _run(REVERSE), elidable=False),
    ]
