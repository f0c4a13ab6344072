"""The finance area: register, journal and reconciliation exports (``exports``) run as
background jobs (``services``), EN 16931 e-invoices (``einvoice``) and its pages (``views``)."""
