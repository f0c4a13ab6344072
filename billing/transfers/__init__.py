"""Corporate bank transfers (对公转账): each organisation's payment reference, the customer's
transfer notices with their remittance slips, and finance matching the bank's lines to
organisations (posting the credit once, key ``bank:<line id>``)."""
