"""The customer's billing page: the balance (with usage not debited yet) and the ledger."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from billing import selectors, services
from portal.accounts.roles import Action
from portal.accounts.views import org_page


@org_page(Action.BILLING_VIEW)
def billing(request: HttpRequest) -> HttpResponse:
    organization = request.organization
    account = services.account_for(organization)
    page = Paginator(selectors.ledger_entries(organization), 50).get_page(request.GET.get("page"))
    context = {
        "account": account,
        "balance": services.balance(organization),
        "page": page,
    }
    return render(request, "billing/billing.html", context)
