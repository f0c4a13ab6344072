from django import forms
from django.utils.translation import gettext_lazy as _

from billing.models import SpendLimitMode
from portal.accounts.forms import PortalForm


class TopUpForm(PortalForm):
    amount = forms.CharField(
        label=_("Amount"),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "100.00"}),
    )


class AutoRechargeForm(PortalForm):
    enabled = forms.BooleanField(label=_("Recharge automatically"), required=False)
    threshold = forms.CharField(
        label=_("When the balance falls below"),
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    amount = forms.CharField(
        label=_("Add"), required=False, widget=forms.TextInput(attrs={"inputmode": "decimal"})
    )


class SpendLimitForm(PortalForm):
    limit = forms.CharField(
        label=_("Monthly spend limit"),
        required=False,
        help_text=_(
            "Leave empty for no limit. Owners and billing members are told at 50 %, 80 % and 100 %."
        ),
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    mode = forms.ChoiceField(
        label=_("When it is reached"),
        choices=SpendLimitMode.choices,
        initial=SpendLimitMode.BLOCK,
        help_text=_("Stopping keeps every disk and volume; instances are never terminated."),
    )


class CreditRequestForm(PortalForm):
    company_name = forms.CharField(label=_("Company name"), max_length=200)
    registration_number = forms.CharField(
        label=_("Registration number"),
        max_length=64,
        help_text=_("Company registration number or unified social credit code."),
    )
    address = forms.CharField(label=_("Registered address"), max_length=500)
    contact_name = forms.CharField(label=_("Finance contact"), max_length=120)
    contact_email = forms.EmailField(label=_("Contact email"))
    contact_phone = forms.CharField(label=_("Contact phone"), max_length=40, required=False)
    expected_monthly_spend = forms.CharField(
        label=_("Expected monthly spend"),
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    note = forms.CharField(
        label=_("Anything finance should know"),
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
    )


class FakeCardForm(PortalForm):
    card_number = forms.CharField(
        label=_("Card number"),
        max_length=23,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "cc-number",
                "inputmode": "numeric",
                "placeholder": "4242 4242 4242 4242",
            }
        ),
    )
    expiry = forms.CharField(
        label=_("Expiry (MM/YY)"),
        max_length=7,
        widget=forms.TextInput(attrs={"autocomplete": "cc-exp", "placeholder": "12/30"}),
    )
    cvc = forms.CharField(
        label=_("CVC"),
        max_length=4,
        widget=forms.TextInput(attrs={"autocomplete": "cc-csc", "inputmode": "numeric"}),
    )
