"""Finance staff and operators: accounts and their append-only ledger, and invoices. Grants,
finalizing, payments, voids and credit notes go through the services."""

import uuid
from datetime import UTC, datetime, time
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.invoicing import services as invoicing
from billing.invoicing.documents import invoice_pdf
from billing.ledger import services
from billing.models import (
    Account,
    BillingProfile,
    CreditRequest,
    CreditRequestStatus,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    LedgerEntry,
    Payment,
    PaymentMethod,
    Refund,
    SpendAlert,
    UsageRating,
    WebhookEvent,
)
from billing.spend import credit_terms
from portal.accounts.middleware import client_ip
from portal.accounts.types import Actor
from portal.admin_base import ReadOnlyAdmin, ReadOnlyTabularInline
from portal.errors import PortalError


class GrantForm(forms.Form):
    amount = forms.DecimalField(
        min_value=0,
        max_digits=20,
        decimal_places=2,
        help_text=gettext_lazy("In the account's currency."),
    )
    reason = forms.CharField(
        max_length=200, help_text=gettext_lazy("Shown on the customer's ledger.")
    )
    key = forms.CharField(widget=forms.HiddenInput)


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["organization", "currency", "balance", "updated_at"]
    list_filter = ["currency"]
    search_fields = ["organization__name", "organization__slug"]
    list_select_related = ["organization"]

    def get_urls(self):
        return [
            path(
                "<int:pk>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="billing_account_grant",
            ),
            *super().get_urls(),
        ]

    def grant_view(self, request, pk: int):
        account = Account.objects.select_related("organization").get(pk=pk)
        form = GrantForm(request.POST or None, initial={"key": f"grant:{uuid.uuid4()}"})
        if request.method == "POST" and form.is_valid():
            actor = Actor.for_operator(request.user, account.organization, client_ip(request))
            try:
                services.credit_grant(
                    actor=actor,
                    organization=account.organization,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    idempotency_key=form.cleaned_data["key"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(
                    request,
                    _("Granted %(amount)s %(currency)s.")
                    % {"amount": form.cleaned_data["amount"], "currency": account.currency},
                )
                return redirect(reverse("admin:billing_account_change", args=[pk]))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "account": account,
            "title": _("Grant credit"),
        }
        return TemplateResponse(request, "billing/admin/grant.html", context)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "account",
        "kind",
        "amount",
        "currency",
        "description",
        "actor_label",
    ]
    list_filter = ["kind", "currency"]
    search_fields = [
        "account__organization__name",
        "account__organization__slug",
        "idempotency_key",
        "reference",
    ]
    list_select_related = ["account__organization"]
    date_hierarchy = "created_at"


@admin.register(UsageRating)
class UsageRatingAdmin(ReadOnlyAdmin):
    list_display = ["usage_record", "amount", "currency", "rated_at"]
    list_filter = ["currency"]


# --- Invoices (finance staff) -----------------------------------------------------------------
# Rows are read-only; every change goes through billing.invoicing.services. Changing actions need the
# ``billing.change_invoice`` permission (superusers have it), viewing needs ``view_invoice``.


class MonthListFilter(admin.SimpleListFilter):
    title = "month"
    parameter_name = "month"

    def lookups(self, request, model_admin):
        months = (
            Invoice.objects.order_by("-period_start")
            .values_list("period_start", flat=True)
            .distinct()[:36]
        )
        return [(f"{m:%Y-%m}", date_format(m, "YEAR_MONTH_FORMAT")) for m in months]

    def queryset(self, request, queryset):
        if self.value():
            try:
                return queryset.filter(period_start=invoicing.month_start(self.value()))
            except PortalError:
                return queryset.none()
        return queryset


class MarkPaidForm(forms.Form):
    reference = forms.CharField(
        max_length=120, help_text=gettext_lazy("The bank transfer's reference or the payment's id.")
    )
    paid_on = forms.DateField(
        required=False, help_text=gettext_lazy("YYYY-MM-DD, when the money arrived (default: now).")
    )


class VoidForm(forms.Form):
    reason = forms.CharField(
        max_length=250, help_text=gettext_lazy("Kept on the invoice and in the audit log.")
    )


class CreditNoteForm(forms.Form):
    amount = forms.DecimalField(
        min_value=Decimal("0.01"),
        max_digits=16,
        decimal_places=2,
        help_text=gettext_lazy(
            "Net amount to credit, before tax (tax follows the invoice's rate)."
        ),
    )
    reason = forms.CharField(max_length=250, help_text=gettext_lazy("Printed on the credit note."))
    # The number of credit notes the page was shown with: a double submit creates one.
    notes = forms.IntegerField(widget=forms.HiddenInput)


class InvoiceLineInline(ReadOnlyTabularInline):
    model = InvoiceLine
    fields = [
        "position",
        "kind",
        "description",
        "quantity",
        "unit",
        "unit_price",
        "exact_amount",
        "amount",
    ]
    readonly_fields = fields


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "organization",
        "kind",
        "period_start",
        "status",
        "currency",
        "total",
        "amount_due",
        "issued_at",
        "due_at",
        "pdf_link",
    ]
    list_filter = [
        MonthListFilter,
        "status",
        "currency",
        "kind",
        ("organization", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["number", "organization__name", "organization__slug"]
    list_select_related = ["organization"]
    inlines = [InvoiceLineInline]
    actions = [
        "finalize_selected",
        "refresh_drafts",
        "resend_selected",
        "mark_paid",
        "void",
        "credit_note",
        "export_register_csv",
        "export_register_xlsx",
        "export_lines_csv",
        "export_lines_xlsx",
        "export_einvoices_zip",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "number",
                    "kind",
                    "corrects",
                    "organization",
                    "status",
                    "period_start",
                    "period_end",
                    "billing_mode",
                    "pdf_link",
                    "finance_actions",
                ]
            },
        ),
        (
            "Amounts",
            {
                "fields": [
                    "currency",
                    "subtotal",
                    "tax_status",
                    "tax_rate",
                    "tax",
                    "total",
                    "credits_applied",
                    "amount_due",
                ]
            },
        ),
        (
            "Dates and payment",
            {
                "fields": [
                    "issued_at",
                    "due_at",
                    "payment_reference",
                    "paid_at",
                    "paid_reference",
                    "voided_at",
                    "note",
                ]
            },
        ),
        ("Parties (as issued)", {"fields": ["seller", "buyer"]}),
    ]
    readonly_fields = ["pdf_link", "finance_actions"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("pdf")

    # --- permissions ---------------------------------------------------------------------

    def has_finance_permission(self, request) -> bool:
        return request.user.has_perm("billing.change_invoice")

    def _require_finance(self, request) -> None:
        if not self.has_finance_permission(request):
            raise DjangoPermissionDenied

    def _actor(self, request, invoice: Invoice) -> Actor:
        return Actor.for_operator(request.user, invoice.organization, client_ip(request))

    # --- columns --------------------------------------------------------------------------

    @admin.display(description="PDF")
    def pdf_link(self, obj: Invoice):
        label = "PDF" if obj.number else _("Draft PDF")
        url = reverse("admin:billing_invoice_pdf", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description=gettext_lazy("Actions"))
    def finance_actions(self, obj: Invoice):
        links = []
        if obj.kind == InvoiceKind.INVOICE and obj.status == InvoiceStatus.FINALIZED:
            links += [
                (_("Mark paid"), "billing_invoice_mark_paid"),
                (_("Void"), "billing_invoice_void"),
            ]
        if obj.kind == InvoiceKind.INVOICE and obj.status in (
            InvoiceStatus.FINALIZED,
            InvoiceStatus.PAID,
        ):
            links.append((_("Credit note"), "billing_invoice_credit_note"))
        if not links:
            return "—"
        return format_html_join(
            " · ",
            '<a href="{}">{}</a>',
            ((reverse(f"admin:{name}", args=[obj.pk]), label) for label, name in links),
        )

    # --- actions on the list ---------------------------------------------------------------

    def _each(self, request, queryset, verb: str, call) -> None:
        done, failed = [], []
        for invoice in queryset.select_related("organization").defer("pdf"):
            try:
                result = call(invoice)
            except PortalError as exc:
                failed.append(f"{invoice}: {exc.message}")
            else:
                done.append(str(result or invoice))
        if done:
            messages.success(
                request, _("%(verb)s: %(done)s.") % {"verb": verb, "done": ", ".join(done)}
            )
        for message in failed:
            messages.error(request, message)

    @admin.action(description=gettext_lazy("Finalize selected drafts"), permissions=["finance"])
    def finalize_selected(self, request, queryset):
        self._each(
            request,
            queryset.filter(status=InvoiceStatus.DRAFT, kind=InvoiceKind.INVOICE),
            "Finalized",
            lambda invoice: invoicing.invoice_finalize(
                invoice, actor=self._actor(request, invoice)
            ),
        )

    @admin.action(
        description=gettext_lazy("Rebuild selected drafts from usage"), permissions=["finance"]
    )
    def refresh_drafts(self, request, queryset):
        self._each(
            request,
            queryset.filter(status=InvoiceStatus.DRAFT, kind=InvoiceKind.INVOICE),
            "Rebuilt",
            lambda invoice: invoicing.invoice_draft_refresh(
                invoice.organization, invoice.period_start
            ),
        )

    @admin.action(description=gettext_lazy("Email selected again"), permissions=["finance"])
    def resend_selected(self, request, queryset):
        self._each(
            request,
            queryset.exclude(status=InvoiceStatus.DRAFT),
            "Emailed again",
            lambda invoice: invoicing.invoice_resend(invoice, actor=self._actor(request, invoice)),
        )

    def _one(self, request, queryset, url_name: str):
        if queryset.count() != 1:
            messages.error(request, _("Select exactly one invoice for this action."))
            return None
        return redirect(reverse(f"admin:{url_name}", args=[queryset.get().pk]))

    @admin.action(description=gettext_lazy("Mark paid…"), permissions=["finance"])
    def mark_paid(self, request, queryset):
        return self._one(request, queryset, "billing_invoice_mark_paid")

    @admin.action(description=gettext_lazy("Void…"), permissions=["finance"])
    def void(self, request, queryset):
        return self._one(request, queryset, "billing_invoice_void")

    @admin.action(description=gettext_lazy("Credit note…"), permissions=["finance"])
    def credit_note(self, request, queryset):
        return self._one(request, queryset, "billing_invoice_credit_note")

    # --- exports of the selection (the finance export's writers, billing.finance.services) -----------

    def _selection_filter(self, queryset):
        from billing.finance.exports import RegisterFilter

        months = sorted(queryset.values_list("period_start", flat=True).distinct())
        return RegisterFilter(
            start=months[0],
            end=months[-1],
            include_drafts=queryset.filter(status=InvoiceStatus.DRAFT).exists(),
            invoice_ids=tuple(queryset.values_list("pk", flat=True)),
        )

    def _export(self, queryset, kind: str, fmt: str) -> HttpResponse:
        """The selection through the finance export's own rows and writers."""
        from billing.finance import services as finance

        flt = self._selection_filter(queryset)
        columns, rows = finance.export_rows(kind, flt)
        _name, body = finance.export_write(fmt, flt, columns, rows)
        response = HttpResponse(body, content_type=finance.CONTENT_TYPES[fmt])
        response["Content-Disposition"] = f'attachment; filename="{kind}-selected.{fmt}"'
        return response

    @admin.action(description=gettext_lazy("Export selected: register (CSV)"))
    def export_register_csv(self, request, queryset):
        return self._export(queryset, "register", "csv")

    @admin.action(description=gettext_lazy("Export selected: register (XLSX)"))
    def export_register_xlsx(self, request, queryset):
        return self._export(queryset, "register", "xlsx")

    @admin.action(description=gettext_lazy("Export selected: lines (CSV)"))
    def export_lines_csv(self, request, queryset):
        return self._export(queryset, "lines", "csv")

    @admin.action(description=gettext_lazy("Export selected: lines (XLSX)"))
    def export_lines_xlsx(self, request, queryset):
        return self._export(queryset, "lines", "xlsx")

    @admin.action(description=gettext_lazy("Export selected: e-invoices and PDFs (ZIP)"))
    def export_einvoices_zip(self, request, queryset):
        from billing.finance import services as finance

        _name, body = finance.documents_zip_write(queryset)
        response = HttpResponse(body, content_type=finance.CONTENT_TYPES["zip"])
        response["Content-Disposition"] = 'attachment; filename="invoices-selected.zip"'
        return response

    # --- pages --------------------------------------------------------------------------------

    def get_urls(self):
        def view(name: str, function):
            return path(
                f"<int:pk>/{name}/",
                self.admin_site.admin_view(function),
                name=f"billing_invoice_{name.replace('-', '_')}",
            )

        return [
            view("pdf", self.pdf_view),
            view("mark-paid", self.mark_paid_view),
            view("void", self.void_view),
            view("credit-note", self.credit_note_view),
            *super().get_urls(),
        ]

    def _invoice(self, request, pk: int) -> Invoice:
        if not self.has_view_permission(request):
            raise DjangoPermissionDenied
        invoice = Invoice.objects.select_related("organization", "corrects").filter(pk=pk).first()
        if invoice is None:
            raise Http404("No such invoice.")
        return invoice

    def pdf_view(self, request, pk: int):
        invoice = self._invoice(request, pk)
        response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
        name = invoice.number or f"draft-{invoice.organization.slug}-{invoice.period_start:%Y-%m}"
        response["Content-Disposition"] = f'attachment; filename="{name}.pdf"'
        return response

    def _form_page(self, request, invoice: Invoice, form, *, title: str, submit: str, intro: str):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "invoice": invoice,
            "form": form,
            "title": title,
            "submit": submit,
            "intro": intro,
        }
        return TemplateResponse(request, "billing/admin/invoice_action.html", context)

    def _back(self, invoice: Invoice):
        return redirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))

    def mark_paid_view(self, request, pk: int):
        self._require_finance(request)
        invoice = self._invoice(request, pk)
        form = MarkPaidForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            paid_on = form.cleaned_data["paid_on"]
            try:
                invoicing.invoice_mark_paid(
                    invoice,
                    reference=form.cleaned_data["reference"],
                    actor=self._actor(request, invoice),
                    paid_at=datetime.combine(paid_on, time(12), tzinfo=UTC) if paid_on else None,
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, _("%(invoice)s marked paid.") % {"invoice": invoice})
                return self._back(invoice)
        return self._form_page(
            request,
            invoice,
            form,
            title=_("Mark %(invoice)s paid") % {"invoice": invoice},
            submit=_("Mark paid"),
            intro=_("%(amount_due)s %(currency)s due from %(organization)s.")
            % {
                "amount_due": invoice.amount_due,
                "currency": invoice.currency,
                "organization": invoice.organization,
            },
        )

    def void_view(self, request, pk: int):
        self._require_finance(request)
        invoice = self._invoice(request, pk)
        form = VoidForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                invoicing.invoice_void(
                    invoice,
                    actor=self._actor(request, invoice),
                    reason=form.cleaned_data["reason"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, _("%(invoice)s voided.") % {"invoice": invoice})
                return self._back(invoice)
        return self._form_page(
            request,
            invoice,
            form,
            title=_("Void %(invoice)s") % {"invoice": invoice},
            submit=_("Void the invoice"),
            intro=(
                _(
                    "Voiding cancels what is still due on it; the month keeps this (void) invoice "
                    "and gets no other. To correct part of it, make a credit note instead."
                )
            ),
        )

    def credit_note_view(self, request, pk: int):
        self._require_finance(request)
        invoice = self._invoice(request, pk)
        notes = invoice.credit_notes.count()
        form = CreditNoteForm(request.POST or None, initial={"notes": notes})
        if request.method == "POST" and form.is_valid():
            if form.cleaned_data["notes"] != notes:
                messages.warning(request, _("A credit note was made meanwhile; nothing was added."))
                return self._back(invoice)
            try:
                note = invoicing.credit_note_create(
                    invoice,
                    actor=self._actor(request, invoice),
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(
                    request,
                    _("Credit note %(note)s issued for %(invoice)s.")
                    % {"note": note, "invoice": invoice},
                )
                return redirect(reverse("admin:billing_invoice_change", args=[note.pk]))
        return self._form_page(
            request,
            invoice,
            form,
            title=_("Credit note for %(invoice)s") % {"invoice": invoice},
            submit=_("Issue the credit note"),
            intro=(
                _(
                    "Subtotal %(subtotal)s %(currency)s, tax %(rate)s %% (%(status)s). "
                    "The credit note is issued at once and emailed."
                )
                % {
                    "subtotal": invoice.subtotal,
                    "currency": invoice.currency,
                    "rate": format(invoice.tax_rate * 100, ".2f"),
                    "status": invoice.get_tax_status_display(),
                }
            ),
        )


# --- Payments -------------------------------------------------------------------------------


class RefundForm(forms.Form):
    amount = forms.DecimalField(
        label=gettext_lazy("Amount to refund"), min_value=Decimal("0.01"), decimal_places=2
    )
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=300)


class RefundInline(ReadOnlyTabularInline):
    model = Refund
    fields = ["created_at", "amount", "status", "provider_id", "reason", "created_by"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "organization",
        "purpose",
        "amount",
        "currency",
        "status",
        "refunded_amount",
        "provider",
        "provider_trade",
        "review",
        "refund_link",
    ]
    list_filter = ["status", "purpose", "provider", "currency"]
    search_fields = ["organization__name", "organization__slug", "payment_intent_id", "checkout_id"]
    list_select_related = ["organization"]
    inlines = [RefundInline]
    date_hierarchy = "created_at"

    @admin.display(description=gettext_lazy("Provider trade id"))
    def provider_trade(self, obj: Payment):
        """Stripe's payment intent, Alipay's trade_no or WeChat Pay's transaction_id."""
        return obj.provider_trade_id or "—"

    @admin.display(description=gettext_lazy("Review"))
    def review(self, obj: Payment):
        """Set when a wallet reported a payment that does not match (nothing was credited)."""
        return obj.flag_reason or "—"

    @admin.display(description=gettext_lazy("Refund"))
    def refund_link(self, obj: Payment):
        if obj.status != "succeeded" or obj.refunded_amount >= obj.amount:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:billing_payment_refund", args=[obj.pk]),
            _("Refund…"),
        )

    def get_urls(self):
        return [
            path(
                "<int:pk>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="billing_payment_refund",
            ),
            *super().get_urls(),
        ]

    def refund_view(self, request, pk: int):
        from billing.payments.services import refund_create

        if not request.user.is_superuser and not request.user.has_perm("billing.change_payment"):
            raise DjangoPermissionDenied
        payment = Payment.objects.select_related("organization").filter(pk=pk).first()
        if payment is None:
            raise Http404("No such payment.")
        form = RefundForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            actor = Actor.for_operator(request.user, payment.organization, client_ip(request))
            try:
                refund = refund_create(
                    actor=actor,
                    payment_id=payment.pk,
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                )
            except PortalError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(
                    request,
                    _("Refund of %(amount)s %(currency)s: %(status)s.")
                    % {
                        "amount": refund.amount,
                        "currency": payment.currency,
                        "status": refund.status,
                    },
                )
                return redirect(reverse("admin:billing_payment_change", args=[payment.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "payment": payment,
            "form": form,
            "title": _("Refund payment %(pk)s") % {"pk": payment.pk},
        }
        return TemplateResponse(request, "billing/admin/refund.html", context)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "provider", "type", "event_id", "processed_at", "outcome"]
    list_filter = ["provider", "type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["event_id", "type"]
    date_hierarchy = "received_at"


@admin.register(PaymentMethod)
class PaymentMethodAdmin(ReadOnlyAdmin):
    list_display = [
        "organization",
        "brand",
        "last4",
        "exp_month",
        "exp_year",
        "is_default",
        "removed_at",
    ]
    list_filter = ["provider", "brand", "is_default"]
    search_fields = ["organization__name", "organization__slug", "provider_id"]
    list_select_related = ["organization"]


@admin.register(BillingProfile)
class BillingProfileAdmin(admin.ModelAdmin):
    """Operators set tax status, rate and payment terms; customers set limits and auto-recharge."""

    list_display = [
        "organization",
        "tax_status",
        "tax_rate",
        "payment_terms_days",
        "monthly_spend_limit",
        "credit_limit",
        "auto_recharge_enabled",
        "balance_exhausted_at",
    ]
    list_filter = ["tax_status", "auto_recharge_enabled", "organization__billing_mode"]
    search_fields = ["organization__name", "organization__slug"]
    fields = [
        "organization",
        "billing_mode",
        "credit_limit",
        "credit_terms_links",
        "tax_status",
        "tax_rate",
        "payment_terms_days",
        "monthly_spend_limit",
        "spend_limit_mode",
        "auto_recharge_enabled",
        "auto_recharge_threshold",
        "auto_recharge_amount",
        "provider",
        "customer_id",
        "balance_exhausted_at",
    ]
    readonly_fields = [
        "organization",
        "billing_mode",
        "credit_limit",
        "credit_terms_links",
        "monthly_spend_limit",
        "spend_limit_mode",
        "auto_recharge_enabled",
        "auto_recharge_threshold",
        "auto_recharge_amount",
        "provider",
        "customer_id",
        "balance_exhausted_at",
    ]

    @admin.display(description=gettext_lazy("Billing mode"))
    def billing_mode(self, obj: BillingProfile):
        return obj.organization.get_billing_mode_display()

    @admin.display(description=gettext_lazy("Credit terms"))
    def credit_terms_links(self, obj: BillingProfile):
        if obj.organization.billing_mode != "invoiced":
            return _("Prepaid: monthly invoicing is granted from a customer's request.")
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a>',
            reverse("admin:billing_billingprofile_credit_terms", args=[obj.pk]),
            _("Change the credit limit or terms…"),
            reverse("admin:billing_billingprofile_credit_revoke", args=[obj.pk]),
            _("Revoke…"),
        )

    def get_urls(self):
        return [
            path(
                "<int:pk>/credit-terms/",
                self.admin_site.admin_view(self.credit_terms_view),
                name="billing_billingprofile_credit_terms",
            ),
            path(
                "<int:pk>/credit-revoke/",
                self.admin_site.admin_view(self.credit_revoke_view),
                name="billing_billingprofile_credit_revoke",
            ),
            *super().get_urls(),
        ]

    def _profile(self, pk: int) -> BillingProfile:
        found = BillingProfile.objects.select_related("organization").filter(pk=pk).first()
        if found is None:
            raise Http404("No such billing profile.")
        return found

    def credit_terms_view(self, request, pk: int):
        _require_credit_permission(request)
        profile = self._profile(pk)
        form = CreditTermsForm(
            request.POST or None,
            initial={
                "credit_limit": profile.credit_limit,
                "payment_terms_days": profile.payment_terms_days,
            },
        )
        return _credit_action_view(
            self,
            request,
            form=form,
            organization=profile.organization,
            target=profile,
            title=_("Credit terms of %(organization)s") % {"organization": profile.organization},
            call=lambda actor, data: credit_terms.credit_terms_change(
                actor=actor,
                organization_id=profile.organization_id,
                credit_limit=data["credit_limit"],
                payment_terms_days=data["payment_terms_days"],
            ),
            done=_("The credit terms are changed."),
            back=reverse("admin:billing_billingprofile_change", args=[profile.pk]),
        )

    def credit_revoke_view(self, request, pk: int):
        _require_credit_permission(request)
        profile = self._profile(pk)
        return _credit_action_view(
            self,
            request,
            form=RevokeForm(request.POST or None),
            organization=profile.organization,
            target=profile,
            title=_("Revoke the credit terms of %(organization)s")
            % {"organization": profile.organization},
            call=lambda actor, data: credit_terms.credit_terms_revoke(
                actor=actor, organization_id=profile.organization_id, reason=data["reason"]
            ),
            done=_("%(organization)s uses prepaid credit from now on.")
            % {"organization": profile.organization},
            back=reverse("admin:billing_billingprofile_change", args=[profile.pk]),
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class CreditTermsForm(forms.Form):
    credit_limit = forms.DecimalField(
        min_value=0,
        max_digits=18,
        decimal_places=2,
        help_text=gettext_lazy(
            "In the organisation's currency: the most it may owe (unpaid invoices, usage "
            "not invoiced yet, the reserve window's burn)."
        ),
    )
    payment_terms_days = forms.IntegerField(
        min_value=0, max_value=credit_terms.MAX_PAYMENT_TERMS_DAYS, initial=30
    )
    note = forms.CharField(
        max_length=500,
        required=False,
        help_text=gettext_lazy("Kept with the decision and in the audit log."),
    )


class DeclineForm(forms.Form):
    note = forms.CharField(max_length=500, help_text=gettext_lazy("Why: kept with the decision."))


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=500, help_text=gettext_lazy("Kept in the audit log."))


def _require_credit_permission(request) -> None:
    if not request.user.has_perm("billing.grant_credit"):
        raise DjangoPermissionDenied


def _credit_action_view(
    modeladmin, request, *, form, organization, title: str, call, done: str, back: str, target
):
    """One finance decision on credit terms: the form, the service, and back."""
    if request.method == "POST" and form.is_valid():
        actor = Actor.for_operator(request.user, organization, client_ip(request))
        try:
            call(actor, form.cleaned_data)
        except PortalError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, done)
            return redirect(back)
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.model._meta,
        "form": form,
        "organization": organization,
        "target": target,
        "title": title,
        "exposure": credit_terms.exposure(organization),
    }
    return TemplateResponse(request, "billing/admin/credit_terms.html", context)


@admin.register(CreditRequest)
class CreditRequestAdmin(ReadOnlyAdmin):
    """Requests for monthly invoicing: finance grants them with a credit limit and payment
    terms, or declines them (both audited)."""

    list_display = [
        "created_at",
        "organization",
        "company_name",
        "expected_monthly_spend",
        "currency",
        "status",
        "decide_links",
    ]
    list_filter = ["status", "currency"]
    search_fields = ["organization__name", "organization__slug", "company_name"]
    list_select_related = ["organization"]
    fields = [
        "organization",
        "status",
        "decide_links",
        "company_name",
        "registration_number",
        "address",
        "contact_name",
        "contact_email",
        "contact_phone",
        "expected_monthly_spend",
        "currency",
        "note",
        "requested_by",
        "created_at",
        "decided_at",
        "decided_by",
        "decision_note",
        "granted_limit",
        "granted_terms_days",
    ]
    readonly_fields = fields

    @admin.display(description=gettext_lazy("Decide"))
    def decide_links(self, obj: CreditRequest):
        if obj.status != CreditRequestStatus.PENDING:
            return "—"
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a>',
            reverse("admin:billing_creditrequest_grant", args=[obj.pk]),
            _("Grant…"),
            reverse("admin:billing_creditrequest_decline", args=[obj.pk]),
            _("Decline…"),
        )

    def get_urls(self):
        return [
            path(
                "<int:pk>/grant/",
                self.admin_site.admin_view(self.grant_view),
                name="billing_creditrequest_grant",
            ),
            path(
                "<int:pk>/decline/",
                self.admin_site.admin_view(self.decline_view),
                name="billing_creditrequest_decline",
            ),
            *super().get_urls(),
        ]

    def _request(self, pk: int) -> CreditRequest:
        found = CreditRequest.objects.select_related("organization").filter(pk=pk).first()
        if found is None:
            raise Http404("No such request.")
        return found

    def grant_view(self, request, pk: int):
        _require_credit_permission(request)
        asked = self._request(pk)
        form = CreditTermsForm(
            request.POST or None, initial={"credit_limit": asked.expected_monthly_spend}
        )
        return _credit_action_view(
            self,
            request,
            form=form,
            organization=asked.organization,
            target=asked,
            title=_("Grant monthly invoicing to %(organization)s")
            % {"organization": asked.organization},
            call=lambda actor, data: credit_terms.credit_terms_grant(
                actor=actor,
                request_id=asked.pk,
                credit_limit=data["credit_limit"],
                payment_terms_days=data["payment_terms_days"],
                note=data["note"],
            ),
            done=_("%(organization)s is invoiced monthly from now on.")
            % {"organization": asked.organization},
            back=reverse("admin:billing_creditrequest_change", args=[asked.pk]),
        )

    def decline_view(self, request, pk: int):
        _require_credit_permission(request)
        asked = self._request(pk)
        return _credit_action_view(
            self,
            request,
            form=DeclineForm(request.POST or None),
            organization=asked.organization,
            target=asked,
            title=_("Decline monthly invoicing for %(organization)s")
            % {"organization": asked.organization},
            call=lambda actor, data: credit_terms.credit_request_decline(
                actor=actor, request_id=asked.pk, note=data["note"]
            ),
            done=_("The request is declined."),
            back=reverse("admin:billing_creditrequest_change", args=[asked.pk]),
        )


@admin.register(SpendAlert)
class SpendAlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "kind", "period"]
    list_filter = ["kind"]
    search_fields = ["organization__name"]
    list_select_related = ["organization"]


from billing.fapiao import admin as _fapiao_admin  # noqa: E402, F401  (registers it)
from billing.transfers import admin as _bank_transfer_admin  # noqa: E402, F401  (registers it)
