"""Fapiao in Django admin: the requests (read-only, with their lines and covered invoices),
exporting the selected ones as the batch spreadsheet, and the red-letter records. Recording an
issued fapiao takes its file, so it is done on the finance page (/finance/fapiao/), linked
from each request."""

from django.contrib import admin, messages
from django.http import HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy

from billing.fapiao import services as fapiao
from billing.finance.fapiao import XLSX
from billing.models import FapiaoCoverage, FapiaoLine, FapiaoRequest, RedLetterFapiao
from portal.accounts.middleware import client_ip
from portal.admin_base import ReadOnlyAdmin, ReadOnlyTabularInline
from portal.errors import PortalError


class FapiaoLineInline(ReadOnlyTabularInline):
    model = FapiaoLine
    fields = ["position", "name", "tax_code", "vat_rate", "net", "tax", "gross"]


class FapiaoCoverageInline(ReadOnlyTabularInline):
    model = FapiaoCoverage
    fields = ["invoice", "amount"]


class RedLetterInline(ReadOnlyTabularInline):
    model = RedLetterFapiao
    fk_name = "original"
    fields = ["number", "issued_on", "invoice", "amount", "net", "tax", "reason", "recorded_by"]


@admin.register(FapiaoRequest)
class FapiaoRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "created_at",
        "organization",
        "kind",
        "buyer_title",
        "amount",
        "currency",
        "status",
        "number",
        "issued_on",
        "file_link",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["organization__slug", "organization__name", "buyer_title", "number"]
    list_select_related = ["organization"]
    exclude = ["file_path"]
    inlines = [FapiaoCoverageInline, FapiaoLineInline, RedLetterInline]
    actions = ["export_batch"]

    def has_issue_permission(self, request) -> bool:
        return request.user.is_staff and request.user.has_perm(fapiao.ISSUE_PERMISSION)

    @admin.display(description=gettext_lazy("File"))
    def file_link(self, obj: FapiaoRequest):
        if obj.file_path:
            url = reverse("billing:finance_fapiao_file", args=[obj.pk])
            return format_html('<a href="{}">{}</a>', url, obj.file_name)
        return format_html(
            '<a href="{}">{}</a>', reverse("billing:finance_fapiao"), gettext_lazy("Record")
        )

    @admin.action(
        description=gettext_lazy("Export selected as the batch-issuance spreadsheet"),
        permissions=["issue"],
    )
    def export_batch(self, request, queryset):
        try:
            batch = fapiao.request_export(
                user=request.user,
                request_ids=list(queryset.values_list("pk", flat=True)),
                ip=client_ip(request),
            )
        except PortalError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        response = HttpResponse(batch.content, content_type=XLSX)
        response["Content-Disposition"] = f'attachment; filename="{batch.filename}"'
        return response


@admin.register(RedLetterFapiao)
class RedLetterFapiaoAdmin(ReadOnlyAdmin):
    list_display = ["number", "issued_on", "original", "invoice", "amount", "reason"]
    search_fields = ["number", "original__number", "invoice__number"]
    list_select_related = ["original", "invoice"]
