"""Forms only parse and label input; the services decide what is allowed."""

from django import forms
from django.conf import settings
from django.contrib.auth import forms as auth_forms
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from django_countries import countries

from portal.accounts.models import (
    Currency,
    EInvoiceProfile,
    ElectronicAddressScheme,
    VerificationKind,
)
from portal.accounts.roles import Role, grantable_roles


class PortalForm(forms.Form):
    """Labels without a trailing colon."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's reset form, with the email written in the language its reader chose."""

    def send_mail(self, subject_template_name, email_template_name, context, *args, **kwargs):
        from portal.accounts.emails import language_of

        with translation.override(language_of(context.get("user"))):
            super().send_mail(subject_template_name, email_template_name, context, *args, **kwargs)


class SignupForm(PortalForm):
    full_name = forms.CharField(label=_("Full name"), max_length=150, required=False)
    email = forms.EmailField(
        label=_("Email"), widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = forms.CharField(
        label=_("Password"),
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("At least 8 characters; not a common password."),
    )


class LoginForm(PortalForm):
    email = forms.EmailField(
        label=_("Email"),
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    password = forms.CharField(
        label=_("Password"), widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )


class AcceptAsNewUserForm(PortalForm):
    full_name = forms.CharField(label=_("Full name"), max_length=150, required=False)
    password = forms.CharField(
        label=_("Choose a password"),
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )


class OrganizationForm(PortalForm):
    name = forms.CharField(label=_("Organisation name"), max_length=120)
    billing_email = forms.EmailField(label=_("Billing email"))
    country = forms.ChoiceField(
        label=_("Country"), choices=lambda: [("", _("Choose a country")), *countries]
    )
    tax_id = forms.CharField(label=_("Tax ID (VAT number)"), max_length=40, required=False)
    currency = forms.ChoiceField(label=_("Currency"), choices=Currency.choices)


class OrganizationSettingsForm(OrganizationForm):
    """The organisation's details and its billing details: the postal address, reference and
    electronic address its invoices state about it (validated again by the service)."""

    street = forms.CharField(label=_("Street and number"), max_length=200, required=False)
    address_line2 = forms.CharField(label=_("Address line 2"), max_length=200, required=False)
    postcode = forms.CharField(label=_("Postcode"), max_length=20, required=False)
    city = forms.CharField(label=_("City"), max_length=100, required=False)
    buyer_reference = forms.CharField(
        label=_("Buyer reference"),
        max_length=200,
        required=False,
        help_text=_(
            "Printed on every invoice for your accounts payable, e.g. a purchase order number "
            "or a Leitweg-ID; empty uses the organisation's slug."
        ),
    )
    electronic_address_scheme = forms.ChoiceField(
        label=_("E-invoice address scheme"),
        choices=lambda: [("", _("None")), *ElectronicAddressScheme.choices],
        required=False,
    )
    electronic_address = forms.CharField(
        label=_("E-invoice address"),
        max_length=200,
        required=False,
        help_text=_("Where your e-invoicing system receives invoices, e.g. a Peppol id."),
    )

    einvoice_profile = forms.ChoiceField(
        label=_("E-invoice profile"),
        choices=EInvoiceProfile.choices,
        required=False,  # a form sent without it keeps the profile chosen
        help_text=_(
            "The rules your UBL and CII e-invoices follow: EN 16931, PEPPOL BIS Billing 3.0 "
            "(needs an e-invoice address) or XRechnung 3.0 (needs the full address, a buyer "
            "reference such as your Leitweg-ID, and an e-invoice address)."
        ),
    )

    DETAILS = ("name", "billing_email", "country", "tax_id", "currency")

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("einvoice_profile"):
            cleaned.pop("einvoice_profile", None)
        return cleaned

    def details_fields(self):
        return [self[name] for name in self.DETAILS]

    def billing_fields(self):
        return [self[name] for name in self.fields if name not in self.DETAILS]


class DeleteOrganizationForm(PortalForm):
    confirm_slug = forms.CharField(label=_("Type the organisation's slug to confirm"))


class RoleChoiceMixin:
    def limit_roles(self, granter_role: str) -> None:
        self.fields["role"].choices = [(r.value, r.label) for r in grantable_roles(granter_role)]


class InvitationForm(RoleChoiceMixin, PortalForm):
    email = forms.EmailField(label=_("Email address"))
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices, initial=Role.MEMBER)


class RoleChangeForm(PortalForm):
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices)


class ApiKeyForm(RoleChoiceMixin, PortalForm):
    name = forms.CharField(
        label=_("Name"), max_length=80, help_text=_("What uses it, e.g. ci-pipeline.")
    )
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices, initial=Role.MEMBER)
    expires_at = forms.DateTimeField(
        label=_("Expires (optional)"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )


class SshKeyForm(PortalForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=80,
        required=False,
        help_text=_("Defaults to the key's comment."),
    )
    public_key = forms.CharField(
        label=_("Public key"),
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "ssh-ed25519 AAAA… you@laptop"}),
    )


class AccountForm(PortalForm):
    full_name = forms.CharField(label=_("Full name"), max_length=150, required=False)
    # The header switcher's choice: the pages, the emails and other devices speak it.
    language = forms.ChoiceField(label=_("Language"), choices=settings.LANGUAGES)


class VerificationForm(PortalForm):
    """Real-name (individual) or enterprise verification; the service checks the numbers and
    the documents, the form only parses. An identity number is never put back into the page
    after a refused submission: it is typed again."""

    kind = forms.ChoiceField(
        label=_("Verify as"),
        choices=VerificationKind.choices,
        widget=forms.RadioSelect,
        initial=VerificationKind.INDIVIDUAL,
    )
    # individual
    name = forms.CharField(label=_("Legal name"), max_length=200, required=False)
    id_number = forms.CharField(
        label=_("Resident identity number"),
        max_length=24,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=_("18 characters, as on the resident identity card (居民身份证)."),
    )
    # enterprise
    company_name = forms.CharField(
        label=_("Registered company name"), max_length=200, required=False
    )
    credit_code = forms.CharField(
        label=_("Unified Social Credit Code"),
        max_length=24,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=_("18 characters, as on the business licence (统一社会信用代码)."),
    )
    business_licence = forms.FileField(
        label=_("Business licence"),
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".pdf,.png,.jpg,.jpeg"}),
        help_text=_("PDF, PNG or JPEG."),
    )
    authorized_person_name = forms.CharField(
        label=_("Authorised person's name"), max_length=120, required=False
    )
    authorized_id_number = forms.CharField(
        label=_("Authorised person's resident identity number"),
        max_length=24,
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    authorization_letter = forms.FileField(
        label=_("Authorisation letter (optional)"),
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".pdf,.png,.jpg,.jpeg"}),
        help_text=_("Needed when the authorised person is not the legal representative."),
    )

    INDIVIDUAL_FIELDS = ("name", "id_number")
    ENTERPRISE_FIELDS = (
        "company_name",
        "credit_code",
        "business_licence",
        "authorized_person_name",
        "authorized_id_number",
        "authorization_letter",
    )
    # the service's field names, for an enterprise, to this form's
    ENTERPRISE_ERROR_FIELDS = {"name": "company_name", "id_number": "authorized_id_number"}

    def error_field(self, kind: str, field: str) -> str | None:
        if kind == VerificationKind.ENTERPRISE:
            field = self.ENTERPRISE_ERROR_FIELDS.get(field, field)
        return field if field in self.fields else None


class VerificationDecisionForm(PortalForm):
    """An operator's reason for rejecting or revoking a verification."""

    reason = forms.CharField(
        label=_("Reason (the customer sees it)"),
        widget=forms.Textarea(attrs={"rows": 4}),
        max_length=2000,
    )
