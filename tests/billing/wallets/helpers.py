from decimal import Decimal

from billing.models import LedgerEntry, Payment


def ledger(org) -> list[tuple[str, Decimal]]:
    return sorted((e.kind, e.amount) for e in LedgerEntry.objects.filter(account__organization=org))


def top_up(client, method: str, amount: str = "100") -> Payment:
    """Top up through the billing page's form; returns the payment its QR page shows."""
    response = client.post("/billing/top-up/", {"amount": amount, "method": method})
    assert response.status_code == 302, _errors(response)
    payment = Payment.objects.latest("id")
    assert response.url == f"/billing/pay/{payment.pk}/"
    return payment


def _errors(response) -> list[str]:
    import re

    return re.findall(
        r'class="[^"]*(?:error|errorlist)[^"]*"[^>]*>\s*(?:<li>)?([^<]+)<',
        response.content.decode(),
    )
