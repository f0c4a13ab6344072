"""Monthly invoices and credit notes (``services``), their PDF (``documents``), their email
(``emails``) and reads of them (``selectors``)."""
