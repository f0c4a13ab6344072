"""The organisation's verification page (实名认证) and its documents, for its owners.

The page parses the form and calls ``portal.accounts.verification``; a refused number is shown
next to its field with its code (``identity_number_invalid``, ``credit_code_invalid``, ...).
"""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from portal.accounts import verification as services
from portal.accounts.forms import VerificationForm
from portal.accounts.models import OrganizationVerification, VerificationKind
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.errors import SHOWN_ON_PAGE

TEMPLATE = "accounts/verification.html"


def _submission(form: VerificationForm) -> services.Submission:
    data = form.cleaned_data
    if data["kind"] == VerificationKind.ENTERPRISE:
        return services.Submission(
            kind=data["kind"],
            name=data["company_name"],
            id_number=data["authorized_id_number"],
            credit_code=data["credit_code"],
            authorized_person_name=data["authorized_person_name"],
            business_licence=data.get("business_licence"),
            authorization_letter=data.get("authorization_letter"),
        )
    return services.Submission(kind=data["kind"], name=data["name"], id_number=data["id_number"])


def _show_error(form: VerificationForm, exc) -> None:
    """The service's sentence next to each field it names, with the field's code."""
    kind = form.cleaned_data.get("kind", "")
    details = exc.details if isinstance(exc.details, dict) else {}
    fields, codes = details.get("fields") or {}, details.get("codes") or {}
    shown = False
    for field, message in fields.items():
        target = form.error_field(kind, field)
        if target is not None:
            form.add_error(target, f"{message} ({codes.get(field, exc.code)})")
            shown = True
    if not shown:
        form.add_error(None, f"{exc.message} ({exc.code})")


@org_page(Action.ORG_VIEW)
@require_http_methods(["GET", "POST"])
def verification(request: HttpRequest) -> HttpResponse:
    """The state of the organisation's verification, the reason of a rejection, and (for its
    owners, when there is nothing pending or approved) the form to submit one."""
    org = request.organization
    can_submit = request.actor.can(Action.ORG_VERIFY)
    current = services.verification_current(org)
    form = VerificationForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if not can_submit:
            raise DjangoPermissionDenied(_("Only owners can submit the verification."))
        if form.is_valid():
            try:
                services.verification_submit(actor=request.actor, submission=_submission(form))
            except SHOWN_ON_PAGE as exc:
                _show_error(form, exc)
            else:
                messages.success(
                    request, _("Thank you. Your verification is submitted for review.")
                )
                url = reverse("accounts:verification")
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        status = 422
    state = services.verification_state(current)
    context = {
        "form": form,
        "verification": current,
        "state": state,
        "can_submit": can_submit
        and (
            state in ("unverified", "rejected", "revoked")
            or (state == "approved" and current.kind == VerificationKind.INDIVIDUAL)
        ),
        "is_owner": can_submit,
        "history": OrganizationVerification.objects.filter(organization=org)
        .select_related("submitted_by")
        .order_by("-submitted_at", "-id")[:20],
        "max_mb": f"{settings.VERIFICATION_DOCUMENT_MAX_BYTES / 1024 / 1024:g}",
    }
    return render(request, TEMPLATE, context, status=status)


def document_response(verification: OrganizationVerification, which: str) -> FileResponse:
    """The stored document as a download with its checked type (never rendered inline)."""
    file = {
        "licence": verification.business_licence,
        "authorization-letter": verification.authorization_letter,
    }.get(which)
    if not file:
        raise Http404(_("No such document."))
    content_type = (
        verification.business_licence_type
        if which == "licence"
        else verification.authorization_letter_type
    )
    suffix = file.name.rsplit(".", 1)[-1] if "." in file.name else "bin"
    response = FileResponse(
        file.open("rb"),
        as_attachment=True,
        filename=f"{which}-{verification.organization_id}-{verification.pk}.{suffix}",
        content_type=content_type or "application/octet-stream",
    )
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _document(request: HttpRequest, which: str) -> HttpResponse:
    current = services.verification_current(request.organization)
    if current is None:
        raise Http404(_("No verification yet."))
    return document_response(current, which)


@org_page(Action.ORG_VERIFY)
@require_GET
def verification_licence(request: HttpRequest) -> HttpResponse:
    """The current verification's business licence, for the organisation's owners."""
    return _document(request, "licence")


@org_page(Action.ORG_VERIFY)
@require_GET
def verification_letter(request: HttpRequest) -> HttpResponse:
    """The current verification's authorisation letter, for the organisation's owners."""
    return _document(request, "authorization-letter")
