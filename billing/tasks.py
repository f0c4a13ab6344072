"""Billing's Celery tasks, by their names (``billing.<task>``). Each is defined in its
sub-package's ``tasks`` module; importing them here is what registers them with the worker
(Celery looks for ``billing.tasks``)."""

from billing.fapiao.tasks import fapiao_issued_notify
from billing.finance.tasks import export_run, exports_sweep
from billing.invoicing.tasks import month_close, refresh_drafts, send_invoice_email
from billing.ledger.tasks import debit_usage
from billing.payments.tasks import (
    checkouts_expire,
    invoice_charge,
    wallets_reconcile,
    webhook_process,
    webhooks_retry,
)
from billing.spend.tasks import spend_watch

__all__ = [
    "checkouts_expire",
    "debit_usage",
    "export_run",
    "exports_sweep",
    "fapiao_issued_notify",
    "invoice_charge",
    "month_close",
    "refresh_drafts",
    "send_invoice_email",
    "spend_watch",
    "wallets_reconcile",
    "webhook_process",
    "webhooks_retry",
]
