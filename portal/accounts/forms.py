"""Forms only parse and label input; the services decide what is allowed."""

from django import forms
from django.conf import settings
from django.contrib.auth import forms as auth_forms
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from django_countries import countries

from portal.accounts.models import Currency
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
