"""The credits ledger: accounts, entries (``ledger_post``), the balance, grants and the
debit of rated usage (``services``); reads of the ledger (``selectors``)."""
