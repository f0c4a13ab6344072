from django import forms
from django.utils.translation import gettext_lazy as _

from portal.accounts.forms import PortalForm


class NoticeForm(PortalForm):
    amount = forms.CharField(
        label=_("Amount"),
        widget=forms.TextInput(attrs={"inputmode": "decimal", "placeholder": "10000.00"}),
    )
    sent_on = forms.CharField(label=_("Date sent"), widget=forms.DateInput(attrs={"type": "date"}))
    payer_name = forms.CharField(
        label=_("Payer account name"),
        max_length=200,
        help_text=_("The name of the account the transfer came from (付款户名)."),
    )
    slip = forms.FileField(
        label=_("Remittance slip"),
        required=False,
        help_text=_("PDF, PNG or JPEG (回单)."),
        widget=forms.ClearableFileInput(attrs={"accept": ".pdf,.png,.jpg,.jpeg"}),
    )


class BankLineForm(PortalForm):
    value_date = forms.CharField(
        label=_("Value date"), widget=forms.DateInput(attrs={"type": "date"})
    )
    amount = forms.CharField(
        label=_("Amount"), widget=forms.TextInput(attrs={"inputmode": "decimal"})
    )
    currency = forms.CharField(label=_("Currency"), max_length=3, initial="CNY")
    payer_name = forms.CharField(label=_("Payer name"), max_length=200)
    payer_account = forms.CharField(label=_("Payer account"), max_length=64, required=False)
    remark = forms.CharField(label=_("Remark"), max_length=300, required=False)
    bank_reference = forms.CharField(label=_("Bank transaction id"), max_length=100, required=False)


class StatementForm(PortalForm):
    statement = forms.FileField(
        label=_("Bank statement (CSV)"),
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )
