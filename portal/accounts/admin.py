from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import (
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    SshKey,
    User,
)
from portal.accounts.services import (
    api_key_revoke,
    invitation_revoke,
    organization_currency_locks,
)
from portal.accounts.types import Actor


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


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "country", "currency", "billing_mode", "created_at"]
    list_filter = ["currency", "billing_mode", "country"]
    search_fields = ["name", "slug", "billing_email", "tax_id"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def get_readonly_fields(self, request, obj=None):
        """The billing mode changes only when finance grants or revokes credit terms (audited,
        in billing's admin); the currency, once money moved or resources exist in it, never."""
        fields = ["billing_mode"]
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
