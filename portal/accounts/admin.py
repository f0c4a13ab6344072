from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from portal.accounts import identity
from portal.accounts.forms import VerificationDecisionForm
from portal.accounts.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    OrganizationVerification,
    SshKey,
    User,
)
from portal.accounts.services import (
    ORG_EDITABLE_FIELDS,
    api_key_revoke,
    invitation_revoke,
    organization_billing_details_check,
    organization_currency_locks,
)
from portal.accounts.types import Actor
from portal.accounts.verification import (
    REVIEW_PERMISSION,
    identity_number_hash,
    verification_approve,
    verification_reject,
    verification_revoke,
)
from portal.errors import InvalidInput, PortalError


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = [
        "email",
        "full_name",
        "is_staff",
        "is_active",
        "email_verified_at",
        "date_joined",
    ]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "full_name"]
    readonly_fields = ["date_joined", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["full_name", "email_verified_at"]}),
        (
            "Permissions",
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        ("Dates", {"fields": ["date_joined", "last_login"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]


class MembershipInline(admin.TabularInline):
    """Read-only: roles change through the members page, which keeps the last-owner rule."""

    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


def _run_for_each(modeladmin, request, queryset, service, id_field: str, done: str) -> None:
    from portal.accounts.middleware import client_ip
    from portal.errors import PortalError

    count = 0
    for obj in queryset.select_related("organization"):
        actor = Actor.for_operator(request.user, obj.organization, client_ip(request))
        try:
            service(actor=actor, **{id_field: obj.pk})
            count += 1
        except PortalError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", level=messages.WARNING)
    modeladmin.message_user(request, done.format(count=count))


class OrganizationAdminForm(forms.ModelForm):
    """Operators edit organisations directly; their billing details are held to the rules the
    customers' settings page keeps (``organization_billing_details_check``)."""

    class Meta:
        model = Organization
        fields = "__all__"  # noqa: DJ007 # the admin's fieldsets choose

    def clean(self):
        cleaned = super().clean()
        values = {key: cleaned.get(key, getattr(self.instance, key)) for key in ORG_EDITABLE_FIELDS}
        try:
            organization_billing_details_check(values)
        except InvalidInput as exc:
            raise ValidationError(exc.message, code=exc.code) from None
        return cleaned


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    form = OrganizationAdminForm
    list_display = ["name", "slug", "country", "currency", "billing_mode", "created_at"]
    list_filter = ["currency", "billing_mode", "country"]
    search_fields = ["name", "slug", "billing_email", "tax_id"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "billing_email", "country", "tax_id"]}),
        (
            _("Billing address and e-invoicing"),
            {
                "fields": [
                    "street",
                    "address_line2",
                    ("postcode", "city"),
                    "buyer_reference",
                    ("electronic_address_scheme", "electronic_address"),
                    "einvoice_profile",
                ]
            },
        ),
        (None, {"fields": ["currency", "billing_mode", "verified_as", "created_at", "deleted_at"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        """The billing mode changes only when finance grants or revokes credit terms (audited,
        in billing's admin); the currency, once money moved or resources exist in it, never."""
        fields = ["billing_mode", "verified_as"]  # verified_as: kept in step by the review
        if obj is not None and organization_currency_locks(obj):
            fields.append("currency")
        return fields


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "status", "sent_at", "expires_at"]
    list_filter = ["role"]
    search_fields = ["email", "organization__name", "organization__slug"]
    fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "sent_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]
    readonly_fields = fields
    list_select_related = ["organization"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # invitations are sent from the members page

    @admin.action(description=_("Revoke selected invitations"))
    def revoke(self, request, queryset):
        _run_for_each(
            self,
            request,
            queryset,
            invitation_revoke,
            "invitation_id",
            "{count} invitation(s) revoked.",
        )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "organization",
        "role",
        "status",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["role"]
    search_fields = ["name", "prefix", "organization__name", "organization__slug"]
    list_select_related = ["organization"]
    # The secret is never stored; its hash is not shown either.
    fields = [
        "name",
        "prefix",
        "organization",
        "role",
        "created_by",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    @admin.action(description=_("Revoke selected API keys"))
    def revoke(self, request, queryset):
        _run_for_each(
            self, request, queryset, api_key_revoke, "api_key_id", "{count} key(s) revoked."
        )

    def has_add_permission(self, request):
        return False  # keys are created by customers or `manage.py create_api_key`


@admin.register(SshKey)
class SshKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "key_type", "bits", "fingerprint", "created_at"]
    list_filter = ["key_type"]
    search_fields = ["name", "fingerprint", "organization__name", "organization__slug"]
    list_select_related = ["organization"]
    readonly_fields = ["key_type", "bits", "fingerprint", "public_key", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False  # keys are parsed and checked by the service


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "organization",
        "actor_label",
        "action",
        "target_label",
        "ip_address",
    ]
    list_filter = ["action", "target_type"]
    search_fields = ["actor_label", "action", "target_label", "organization__slug"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- real-name and enterprise verification --------------------------------------------------


@admin.register(OrganizationVerification)
class OrganizationVerificationAdmin(admin.ModelAdmin):
    """Only staff with ``accounts.review_verification`` see or decide verifications. Identity
    numbers appear masked; documents open through a view that checks the same permission."""

    list_display = [
        "organization",
        "kind",
        "status",
        "name",
        "id_number_masked",
        "credit_code",
        "submitted_at",
        "reviewed_by",
        "is_current",
    ]
    list_filter = ["status", "kind", "is_current"]
    search_fields = ["organization__name", "organization__slug", "name", "credit_code"]
    list_select_related = ["organization", "reviewed_by"]
    # The encrypted number and its hash are never shown.
    fields = [
        "organization",
        "kind",
        "status",
        "is_current",
        "name",
        "id_number_masked",
        "credit_code",
        "authorized_person_name",
        "documents",
        "submitted_by",
        "submitted_at",
        "reviewed_by",
        "reviewed_at",
        "reason",
    ]
    readonly_fields = fields
    actions = ["approve"]
    change_form_template = "admin/accounts/organizationverification/change_form.html"

    def _may_review(self, request) -> bool:
        return request.user.is_active and request.user.has_perm(REVIEW_PERMISSION)

    def has_view_permission(self, request, obj=None):
        return self._may_review(request)

    def has_change_permission(self, request, obj=None):
        return self._may_review(request)

    def has_module_permission(self, request):
        return self._may_review(request) or super().has_module_permission(request)

    def has_add_permission(self, request):
        return False  # customers submit; operators decide

    def has_delete_permission(self, request, obj=None):
        return False  # the history is kept

    def get_search_results(self, request, queryset, search_term):
        """An identity number typed in the search finds its verifications by the keyed hash."""
        number = identity.normalize(search_term)
        if identity.resident_id_valid(number):
            return queryset.filter(id_number_hash=identity_number_hash(number)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description=_("documents"))
    def documents(self, obj):
        links = []
        for which, file, label in (
            ("licence", obj.business_licence, _("Business licence")),
            ("authorization-letter", obj.authorization_letter, _("Authorisation letter")),
        ):
            if file:
                url = reverse("admin:accounts_verification_document", args=[obj.pk, which])
                links.append(format_html('<a href="{}">{}</a>', url, label))
        return format_html_join(" · ", "{}", ((link,) for link in links)) or "-"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/document/<slug:which>/",
                view(self.document_view),
                name="accounts_verification_document",
            ),
            path(
                "<int:pk>/approve/", view(self.approve_view), name="accounts_verification_approve"
            ),
            path(
                "<int:pk>/reject/",
                view(self.decision_view),
                {"decision": "reject"},
                name="accounts_verification_reject",
            ),
            path(
                "<int:pk>/revoke/",
                view(self.decision_view),
                {"decision": "revoke"},
                name="accounts_verification_revoke",
            ),
            *super().get_urls(),
        ]

    def _object(self, request, pk: int) -> OrganizationVerification:
        if not self._may_review(request):
            raise DjangoPermissionDenied
        obj = OrganizationVerification.objects.select_related("organization").filter(pk=pk).first()
        if obj is None:
            raise Http404
        return obj

    def _operator(self, request, obj) -> Actor:
        from portal.accounts.middleware import client_ip

        return Actor.for_operator(request.user, obj.organization, client_ip(request))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "show_delete": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def document_view(self, request, pk: int, which: str):
        from portal.accounts.verification_views import document_response

        obj = self._object(request, pk)
        return document_response(obj, which)

    def approve_view(self, request, pk: int):
        obj = self._object(request, pk)
        if request.method != "POST":
            return HttpResponseRedirect(
                reverse("admin:accounts_organizationverification_change", args=[pk])
            )
        try:
            verification_approve(actor=self._operator(request, obj), verification_id=obj.pk)
        except PortalError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
        else:
            self.message_user(request, _("%(obj)s approved.") % {"obj": obj}, messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:accounts_organizationverification_change", args=[pk])
        )

    def decision_view(self, request, pk: int, decision: str):
        obj = self._object(request, pk)
        service = {"reject": verification_reject, "revoke": verification_revoke}[decision]
        form = VerificationDecisionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                service(
                    actor=self._operator(request, obj),
                    verification_id=obj.pk,
                    reason=form.cleaned_data["reason"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                done = _("%(obj)s rejected.") if decision == "reject" else _("%(obj)s revoked.")
                self.message_user(request, done % {"obj": obj}, messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:accounts_organizationverification_change", args=[pk])
                )
        title = _("Reject verification") if decision == "reject" else _("Revoke verification")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": title,
            "original": obj,
            "submit_label": title,
            "has_view_permission": True,
        }
        return TemplateResponse(request, "admin/accounts/verification_decision.html", context)

    @admin.action(description=_("Approve selected verifications"))
    def approve(self, request, queryset):
        _run_for_each(
            self,
            request,
            queryset,
            verification_approve,
            "verification_id",
            _("{count} verification(s) approved."),
        )
