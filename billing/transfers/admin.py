"""Bank transfers in Django admin: read-only lists of received transfers and customer notices;
matching to the suggested organisation (an action) needs ``billing.match_bank_transfer``."""

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.models import BankLine, BankTransferNotice, PaymentReference
from billing.transfers import services as transfers
from portal.accounts.middleware import client_ip
from portal.admin_base import ReadOnlyAdmin
from portal.errors import PortalError


@admin.register(BankLine)
class BankLineAdmin(ReadOnlyAdmin):
    list_display = [
        "value_date",
        "amount",
        "currency",
        "payer_name",
        "remark",
        "bank_reference",
        "status",
        "suggested_organization",
        "organization",
        "decided_by",
    ]
    list_filter = ["status", "source", "currency"]
    search_fields = ["payer_name", "remark", "bank_reference", "organization__slug"]
    list_select_related = ["organization", "suggested_organization", "decided_by"]
    date_hierarchy = "value_date"
    actions = ["match_suggested"]

    def has_match_permission(self, request) -> bool:
        return request.user.is_staff and request.user.has_perm(transfers.MATCH_PERMISSION)

    @admin.action(
        description=gettext_lazy("Match selected to the suggested organisation"),
        permissions=["match"],
    )
    def match_suggested(self, request, queryset):
        matched = 0
        for line in queryset.select_related("suggested_organization"):
            if line.suggested_organization is None:
                self.message_user(
                    request,
                    _("%(line)s has no suggested organisation.") % {"line": line},
                    messages.WARNING,
                )
                continue
            try:
                transfers.bank_line_match(
                    user=request.user,
                    line_id=line.pk,
                    organization=line.suggested_organization,
                    ip=client_ip(request),
                )
            except PortalError as exc:
                self.message_user(request, f"{line}: {exc.message}", messages.ERROR)
            else:
                matched += 1
        if matched:
            self.message_user(
                request, _("%(count)s transfers matched.") % {"count": matched}, messages.SUCCESS
            )


@admin.register(BankTransferNotice)
class BankTransferNoticeAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "organization",
        "reference",
        "amount",
        "currency",
        "sent_on",
        "payer_name",
        "status",
        "slip_link",
    ]
    list_filter = ["status", "currency"]
    search_fields = ["organization__slug", "organization__name", "reference", "payer_name"]
    list_select_related = ["organization"]
    exclude = ["slip_path"]

    @admin.display(description=gettext_lazy("Slip"))
    def slip_link(self, obj: BankTransferNotice):
        return format_html(
            '<a href="{}">{}</a>',
            reverse("billing:finance_bank_notice_slip", args=[obj.pk]),
            obj.slip_name,
        )


@admin.register(PaymentReference)
class PaymentReferenceAdmin(ReadOnlyAdmin):
    list_display = ["code", "organization", "created_at"]
    search_fields = ["code", "organization__slug", "organization__name"]
    list_select_related = ["organization"]
