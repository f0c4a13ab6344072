from django import forms
from django.utils.translation import gettext_lazy as _

from billing.models import FapiaoKind
from portal.accounts.forms import PortalForm


class FapiaoRequestForm(PortalForm):
    """The customer's fapiao request; the invoices offered are what is still invoiceable."""

    kind = forms.ChoiceField(
        label=_("Fapiao type"),
        choices=FapiaoKind.choices,
        widget=forms.RadioSelect,
        initial=FapiaoKind.ORDINARY,
        help_text=_(
            "A special VAT invoice lets the buyer deduct input VAT; verified enterprises only."
        ),
    )
    invoices = forms.MultipleChoiceField(
        label=_("Invoices to cover"), widget=forms.CheckboxSelectMultiple, required=False
    )
    buyer_title = forms.CharField(label=_("Buyer title (抬头)"), max_length=200)
    buyer_tax_id = forms.CharField(
        label=_("Unified Social Credit Code"),
        max_length=24,
        help_text=_("The buyer's 18-character taxpayer identification number (纳税人识别号)."),
    )
    buyer_address = forms.CharField(label=_("Registered address"), max_length=300, required=False)
    buyer_phone = forms.CharField(label=_("Phone"), max_length=40, required=False)
    buyer_bank = forms.CharField(label=_("Bank"), max_length=200, required=False)
    buyer_account = forms.CharField(label=_("Bank account"), max_length=64, required=False)
    email = forms.EmailField(
        label=_("Email for the fapiao"),
        required=False,
        help_text=_("Where to say it is issued. Empty: the organisation's billing email."),
    )

    def __init__(self, *args, invoice_choices=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["invoices"].choices = list(invoice_choices)
