from django import forms

from portal.accounts.forms import PortalForm


class TopUpForm(PortalForm):
    amount = forms.CharField(
        label="Amount",
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "100.00"}),
    )


class AutoRechargeForm(PortalForm):
    enabled = forms.BooleanField(label="Recharge automatically", required=False)
    threshold = forms.CharField(
        label="When the balance falls below",
        required=False,
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    amount = forms.CharField(
        label="Add", required=False, widget=forms.TextInput(attrs={"inputmode": "decimal"})
    )


class SpendLimitForm(PortalForm):
    limit = forms.CharField(
        label="Monthly spend limit",
        required=False,
        help_text="Leave empty for no limit. Reaching it blocks new launches; running instances keep running.",
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )


class FakeCardForm(PortalForm):
    card_number = forms.CharField(
        label="Card number",
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
        label="Expiry (MM/YY)",
        max_length=7,
        widget=forms.TextInput(attrs={"autocomplete": "cc-exp", "placeholder": "12/30"}),
    )
    cvc = forms.CharField(
        label="CVC",
        max_length=4,
        widget=forms.TextInput(attrs={"autocomplete": "cc-csc", "inputmode": "numeric"}),
    )
