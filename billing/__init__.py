"""Billing: the credits ledger, payments, invoices, spend controls and the finance area.

Sub-packages, lowest first; each imports only those before it (a lower one announces what
happened through a hook, never by importing a higher one):

- ``ledger``: accounts and entries, the balance, grants, the debit of rated usage;
- ``payments``: providers (fake, Stripe), top-ups, saved cards, refunds, webhooks; announces a
  paid invoice and arrived credit through ``payments.hooks``;
- ``invoicing``: monthly invoices and credit notes, their PDF (``documents``) and email;
- ``spend``: launch checks, low-balance and spend-limit notices, stopping instances;
- ``finance``: exports (register, lines, journal, reconciliation), e-invoices, finance pages.

Each has ``services`` (writes) and, where it reads for pages, ``selectors``, and its Celery
tasks in ``tasks`` (``billing.tasks`` gathers them under their ``billing.<name>`` names).
Models stay in ``billing.models``; ``admin``, ``views``, ``urls`` and ``api`` are the web layer.
Money rules (rounding, formats) are ``portal.money``'s.
"""
