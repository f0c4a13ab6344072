"""Pages that show several apps at once."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from billing.ledger.services import balance
from portal.accounts import selectors
from portal.accounts.roles import Action
from portal.accounts.types import BillingMode
from portal.compute.selectors import instances_list
from portal.metering.selectors import burn_rate


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The overview: people and keys, what runs and what it burns, the credit left (as the
    billing page shows it)."""
    if request.organization is None:
        if request.user.is_staff:  # operators and finance staff belong to no organisation
            if request.user.has_perm("billing.view_invoice"):
                return redirect("billing:finance")
            return redirect("admin:index")
        return redirect("accounts:organization_create")
    org = request.organization
    context = {
        "member_count": selectors.members_list(org).count(),
        "ssh_key_count": selectors.ssh_keys_list(org).count(),
        "api_key_count": selectors.api_keys_list(org).filter(revoked_at__isnull=True).count(),
    }
    if request.actor.can(Action.INSTANCE_VIEW):
        context["burn"] = burn_rate(org)
        context["has_instances"] = instances_list(org).exists()
    if request.actor.can(Action.BILLING_VIEW) and org.billing_mode == BillingMode.PREPAID:
        context["balance"] = balance(org)
    return render(request, "accounts/dashboard.html", context)
