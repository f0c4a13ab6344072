"""Finance staff and operators: accounts and their append-only ledger; grants go through the service."""

import uuid

from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from billing import services
from billing.models import Account, LedgerEntry, UsageRating
from portal.accounts.middleware import client_ip
from portal.accounts.types import Actor
from portal.admin_base import ReadOnlyAdmin
from portal.errors import PortalError


class GrantForm(forms.Form):
    amount = forms.DecimalField(
        min_value=0, max_digits=20, decimal_places=2, help_text="In the account's currency."
    )
    reason = forms.CharField(max_length=200, help_text="Shown on the customer's ledger.")
    key = forms.CharField(widget=forms.HiddenInput)


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["organization", "currency", "balance", "updated_at"]
    list_filter = ["currency"]
    search_fields = ["organization__name", "organization__slug"]
    list_select_related = ["organization"]

    def get_urls(self):
        return [
            path(
                "<int:pk>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="billing_account_grant",
            ),
            *super().get_urls(),
        ]

    def grant_view(self, request, pk: int):
        account = Account.objects.select_related("organization").get(pk=pk)
        form = GrantForm(request.POST or None, initial={"key": f"grant:{uuid.uuid4()}"})
        if request.method == "POST" and form.is_valid():
            actor = Actor.for_operator(request.user, account.organization, client_ip(request))
            try:
                services.credit_grant(
                    actor=actor,
                    organization=account.organization,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    idempotency_key=form.cleaned_data["key"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(
                    request, f"Granted {form.cleaned_data['amount']} {account.currency}."
                )
                return redirect(reverse("admin:billing_account_change", args=[pk]))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "account": account,
            "title": "Grant credit",
        }
        return TemplateResponse(request, "billing/admin/grant.html", context)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "account",
        "kind",
        "amount",
        "currency",
        "description",
        "actor_label",
    ]
    list_filter = ["kind", "currency"]
    search_fields = [
        "account__organization__name",
        "account__organization__slug",
        "idempotency_key",
        "reference",
    ]
    list_select_related = ["account__organization"]
    date_hierarchy = "created_at"


@admin.register(UsageRating)
class UsageRatingAdmin(ReadOnlyAdmin):
    list_display = ["usage_record", "amount", "currency", "rated_at"]
    list_filter = ["currency"]
