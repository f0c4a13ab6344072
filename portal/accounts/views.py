"""Account pages. One view per page; htmx requests get the named partial back.

Views parse a form, call one service, and render. A ``PortalError`` from the service is shown
next to the form as the same sentence the API returns.
"""

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from portal.accounts import selectors, services
from portal.accounts.filters import AuditEventFilter
from portal.accounts.forms import (
    AcceptAsNewUserForm,
    AccountForm,
    ApiKeyForm,
    DeleteOrganizationForm,
    InvitationForm,
    LoginForm,
    OrganizationForm,
    OrganizationSettingsForm,
    RoleChangeForm,
    SignupForm,
    SshKeyForm,
)
from portal.accounts.middleware import SESSION_KEY, client_ip
from portal.accounts.roles import Action, Role, grantable_roles, role_abilities
from portal.accounts.verification import verification_current
from portal.errors import SHOWN_ON_PAGE

# --- helpers --------------------------------------------------------------------------------


def org_page(action: Action) -> Callable:
    """Signed in, in an organisation, and the role allows ``action`` (else the 403 page)."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        @login_required
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.organization is None:
                return redirect("accounts:organization_create")
            if not request.actor.can(action):
                raise DjangoPermissionDenied(
                    _("Your role in this organisation does not allow this.")
                )
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _role_name(role: str) -> str:
    """A role as a sentence names it: "member" in English, 成员 in Chinese."""
    return str(Role(role).label).lower()


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def _render(request: HttpRequest, template: str, partial: str, context: dict, status: int = 200):
    """The whole page, or just ``partial`` for an htmx request."""
    name = f"{template}#{partial}" if request.htmx else template
    return render(request, name, context, status=status)


def _done(request: HttpRequest, url: str, message: str | None = None) -> HttpResponse:
    if message:
        messages.success(request, message)
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


# --- sign up, log in, verify ------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("accounts:dashboard")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_signup(ip_address=client_ip(request), **form.cleaned_data)
        except SHOWN_ON_PAGE as exc:
            form.add_error("password" if exc.code == "password_invalid" else "email", exc.message)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(
                request,
                _("Welcome! We sent a confirmation link to %(email)s.") % {"email": user.email},
            )
            return redirect(_safe_next(request, reverse("accounts:organization_create")))
    return render(request, "accounts/signup.html", {"form": form, "next": _safe_next(request, "")})


def login_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(_safe_next(request, reverse("accounts:dashboard")))
    form = LoginForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_login(request=request, **form.cleaned_data)
        except SHOWN_ON_PAGE as exc:
            form.add_error(None, exc.message)
            status = exc.status if exc.code == "login_throttled" else 200
        else:
            login(request, user)
            return redirect(_safe_next(request, reverse("accounts:dashboard")))
    return render(
        request,
        "accounts/login.html",
        {"form": form, "next": _safe_next(request, "")},
        status=status,
    )


@require_http_methods(["GET", "POST"])
def logout_view(request: HttpRequest) -> HttpResponse:
    """POST logs out; GET (a typed or bookmarked link) asks with a button instead of a blank
    405, since logging out on GET would let any page log a user out."""
    if request.method == "GET":
        return render(request, "accounts/logout.html")
    logout(request)
    messages.info(request, _("You are logged out."))
    return redirect("accounts:login")


def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    try:
        user = services.user_verify_email(token=token)
    except SHOWN_ON_PAGE as exc:
        return render(request, "accounts/verify_email.html", {"error": exc.message}, status=400)
    if request.user.is_authenticated and request.user.pk == user.pk:
        request.user = user  # the page's header must not still ask to confirm the address
    return render(request, "accounts/verify_email.html", {"verified_user": user})


@login_required
@require_POST
def verify_email_resend(request: HttpRequest) -> HttpResponse:
    if not request.user.email_verified:
        services.user_send_verification(user=request.user)
        messages.success(
            request,
            _("We sent a new confirmation link to %(email)s.") % {"email": request.user.email},
        )
    return redirect(_safe_next(request, reverse("accounts:account")))


# --- dashboard and organisations --------------------------------------------------------------


@login_required
def organization_create(request: HttpRequest) -> HttpResponse:
    initial = {"billing_email": request.user.email, "currency": "USD"}
    form = OrganizationForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            org = services.organization_create(
                user=request.user, ip_address=client_ip(request), **form.cleaned_data
            )
        except SHOWN_ON_PAGE as exc:
            form.add_error(None, exc.message)
        else:
            request.session[SESSION_KEY] = org.pk
            return _done(
                request,
                reverse("accounts:dashboard"),
                _("Organisation %(name)s created.") % {"name": org.name},
            )
    return render(request, "accounts/organization_create.html", {"form": form})


@login_required
@require_POST
def organization_switch(request: HttpRequest) -> HttpResponse:
    membership = None
    raw = request.POST.get("organization", "")
    if raw.isdigit() and len(raw) < 19:
        membership = selectors.membership_for(request.user, int(raw))
    if membership is None:
        messages.error(request, _("You are not a member of that organisation."))
    else:
        request.session[SESSION_KEY] = membership.organization_id
        messages.info(
            request,
            _("Switched to %(organization)s.") % {"organization": membership.organization.name},
        )
    return redirect(_safe_next(request, reverse("accounts:dashboard")))


@require_POST
def language_switch(request: HttpRequest) -> HttpResponse:
    """The header's language switcher: kept in a cookie for everyone and on the user for
    those signed in (so emails and other devices speak it too)."""
    language = request.POST.get("language", "")
    if language not in dict(settings.LANGUAGES):
        messages.error(request, _("That language is not available."))
        return redirect(_safe_next(request, reverse("accounts:dashboard")))
    if request.user.is_authenticated:
        services.user_set_language(user=request.user, language=language)
    translation.activate(language)
    response = redirect(_safe_next(request, reverse("accounts:dashboard")))
    _remember_language(response, language)
    return response


def _remember_language(response: HttpResponse, language: str) -> None:
    """The language cookie, for the pages seen signed out on this browser."""
    response.set_cookie(
        settings.LANGUAGE_COOKIE_NAME,
        language,
        max_age=settings.LANGUAGE_COOKIE_AGE,
        secure=settings.LANGUAGE_COOKIE_SECURE,
        httponly=True,
        samesite=settings.LANGUAGE_COOKIE_SAMESITE,
    )


@org_page(Action.ORG_VIEW)
@require_http_methods(["GET", "POST"])
def organization_settings(request: HttpRequest) -> HttpResponse:
    org = request.organization
    can_edit = request.actor.can(Action.ORG_UPDATE)
    form = OrganizationSettingsForm(
        request.POST or None,
        initial={field: getattr(org, field) for field in services.ORG_EDITABLE_FIELDS},
    )
    if not can_edit:
        for field in form.fields.values():
            field.disabled = True
    currency_locks = services.organization_currency_locks(org)
    if currency_locks:
        form.fields["currency"].disabled = True
        form.fields["currency"].help_text = _(
            "Fixed: money has moved or resources are held in this currency."
        )
    if request.method == "POST":
        if not can_edit:
            raise DjangoPermissionDenied(_("Your role does not allow changing the organisation."))
        if form.is_valid():
            try:
                services.organization_update(actor=request.actor, **form.cleaned_data)
            except SHOWN_ON_PAGE as exc:
                form.add_error(None, exc.message)
            else:
                return _done(
                    request, reverse("accounts:organization_settings"), _("Settings saved.")
                )
    context = {
        "form": form,
        "can_edit": can_edit,
        "delete_form": DeleteOrganizationForm(),
        "verification": verification_current(org),  # its state and a rejection's reason
    }
    return render(request, "accounts/organization_settings.html", context)


@org_page(Action.ORG_DELETE)
@require_POST
def organization_delete(request: HttpRequest) -> HttpResponse:
    form = DeleteOrganizationForm(request.POST)
    name = request.organization.name
    if form.is_valid():
        try:
            services.organization_delete(actor=request.actor, **form.cleaned_data)
        except SHOWN_ON_PAGE as exc:
            form.add_error("confirm_slug", exc.message)
        else:
            request.session.pop(SESSION_KEY, None)
            return _done(
                request,
                reverse("accounts:dashboard"),
                _("Organisation %(name)s was deleted.") % {"name": name},
            )
    context = {
        "form": OrganizationSettingsForm(
            initial={f: getattr(request.organization, f) for f in services.ORG_EDITABLE_FIELDS}
        ),
        "can_edit": request.actor.can(Action.ORG_UPDATE),
        "delete_form": form,
    }
    return _render(
        request, "accounts/organization_settings.html", "danger-zone", context, status=422
    )


# --- members and invitations ------------------------------------------------------------------


def _members_context(request: HttpRequest, invite_form: InvitationForm | None = None) -> dict:
    org = request.organization
    form = invite_form or InvitationForm()
    form.limit_roles(request.actor.role)
    return {
        "members": selectors.members_for_page(org),
        "invitations": selectors.invitations_open(org),
        "invite_form": form,
        "roles": list(Role),
        "grantable": {role.value for role in grantable_roles(request.actor.role)},
    }


@org_page(Action.MEMBER_VIEW)
def members(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/members.html", _members_context(request))


@org_page(Action.MEMBER_INVITE)
@require_POST
def invitation_create(request: HttpRequest) -> HttpResponse:
    form = InvitationForm(request.POST)
    form.limit_roles(request.actor.role)
    status = 422
    if form.is_valid():
        try:
            invitation = services.invitation_create(actor=request.actor, **form.cleaned_data)
        except SHOWN_ON_PAGE as exc:
            form.add_error("email", exc.message)
        else:
            messages.success(
                request, _("Invitation sent to %(email)s.") % {"email": invitation.email}
            )
            form, status = None, 200
    if not request.htmx and status == 200:
        return redirect("accounts:members")
    return _render(
        request, "accounts/members.html", "invitations", _members_context(request, form), status
    )


def _invitation_action(request: HttpRequest, pk: int, service: Callable, done: str) -> HttpResponse:
    try:
        invitation = service(actor=request.actor, invitation_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done % {"email": invitation.email})
    if not request.htmx:
        return redirect("accounts:members")
    return _render(request, "accounts/members.html", "invitations", _members_context(request))


@org_page(Action.MEMBER_INVITE)
@require_POST
def invitation_resend(request: HttpRequest, pk: int) -> HttpResponse:
    return _invitation_action(
        request, pk, services.invitation_resend, _("New link sent to %(email)s.")
    )


@org_page(Action.MEMBER_INVITE)
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    return _invitation_action(
        request, pk, services.invitation_revoke, _("Invitation of %(email)s revoked.")
    )


@org_page(Action.MEMBER_CHANGE_ROLE)
@require_POST
def membership_role(request: HttpRequest, pk: int) -> HttpResponse:
    form = RoleChangeForm(request.POST)
    if form.is_valid():
        try:
            membership = services.membership_change_role(
                actor=request.actor, membership_id=pk, role=form.cleaned_data["role"]
            )
        except SHOWN_ON_PAGE as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                _("%(email)s is now %(role)s.")
                % {"email": membership.user.email, "role": _role_name(membership.role)},
            )
    if not request.htmx:
        return redirect("accounts:members")
    return _render(request, "accounts/members.html", "member-table", _members_context(request))


@org_page(Action.MEMBER_VIEW)
@require_POST
def membership_remove(request: HttpRequest, pk: int) -> HttpResponse:
    leaving = request.membership.pk == pk
    if not leaving and not request.actor.can(Action.MEMBER_REMOVE):
        raise DjangoPermissionDenied(_("Your role does not allow removing members."))
    try:
        services.membership_remove(actor=request.actor, membership_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        if leaving:
            request.session.pop(SESSION_KEY, None)
            return _done(request, reverse("accounts:dashboard"), _("You left the organisation."))
        messages.success(request, _("Member removed."))
    if not request.htmx:
        return redirect("accounts:members")
    return _render(request, "accounts/members.html", "member-table", _members_context(request))


INVITATION_SESSION_KEY = "invitation_token"


def invitation_link(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link: keep the token in the session and continue on a URL without it, so
    the token never appears in logs or Referer headers (as Django's password reset does)."""
    request.session[INVITATION_SESSION_KEY] = token
    return redirect("accounts:invitation_accept")


def invitation_accept(request: HttpRequest) -> HttpResponse:
    """Accept as the signed-in user, or create an account and accept."""
    token = request.session.get(INVITATION_SESSION_KEY, "")
    if not token:
        message = _("Open the invitation link from your email again.")
        return render(request, "accounts/invitation_accept.html", {"error": message}, status=400)
    try:
        invitation = services.invitation_for_token(token)
    except SHOWN_ON_PAGE as exc:
        return render(
            request, "accounts/invitation_accept.html", {"error": exc.message}, status=400
        )
    account_exists = selectors.user_exists(invitation.email)
    form = AcceptAsNewUserForm(request.POST or None)
    context = {"invitation": invitation, "account_exists": account_exists, "form": form}
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                membership = services.invitation_accept(
                    token=token, user=request.user, ip_address=client_ip(request)
                )
            elif not account_exists and form.is_valid():
                user = services.invitation_accept_as_new_user(
                    token=token, ip_address=client_ip(request), **form.cleaned_data
                )
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                membership = selectors.membership_for(user, invitation.organization_id)
            else:
                return render(request, "accounts/invitation_accept.html", context, status=422)
        except SHOWN_ON_PAGE as exc:
            context["error"] = exc.message
            return render(request, "accounts/invitation_accept.html", context, status=exc.status)
        request.session.pop(INVITATION_SESSION_KEY, None)
        request.session[SESSION_KEY] = membership.organization_id
        messages.success(
            request,
            _("You joined %(organization)s as %(role)s.")
            % {"organization": membership.organization.name, "role": _role_name(membership.role)},
        )
        return redirect("accounts:dashboard")
    return render(request, "accounts/invitation_accept.html", context)


# --- API keys ---------------------------------------------------------------------------------

NEW_API_KEY_COOKIE = "new_api_key"
NEW_API_KEY_COOKIE_SALT = "portal.accounts.new-api-key"
NEW_API_KEY_COOKIE_MAX_AGE = 120


def _api_keys_context(request: HttpRequest, form: ApiKeyForm | None = None, **extra) -> dict:
    form = form or ApiKeyForm()
    form.limit_roles(request.actor.role)
    grantable = grantable_roles(request.actor.role)
    return {
        "api_keys": selectors.api_keys_list(request.organization),
        "form": form,
        "grantable": {role.value for role in grantable},
        "role_abilities": [(role.label, *role_abilities(role)) for role in grantable],
        **extra,
    }


@org_page(Action.API_KEY_VIEW)
def api_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not request.actor.can(Action.API_KEY_MANAGE):
            raise DjangoPermissionDenied(_("Your role does not allow creating API keys."))
        form = ApiKeyForm(request.POST)
        form.limit_roles(request.actor.role)
        if form.is_valid():
            try:
                api_key, secret = services.api_key_create(actor=request.actor, **form.cleaned_data)
            except SHOWN_ON_PAGE as exc:
                form.add_error(None, exc.message)
            else:
                # The secret is shown once. htmx swaps it in directly; a plain form post
                # redirects and the next page view pops it from the session, so reloading
                # neither shows it again nor creates a second key.
                if request.htmx:
                    context = _api_keys_context(request, new_key=api_key, new_secret=secret)
                    return _render(request, "accounts/api_keys.html", "api-key-panel", context)
                # The secret rides in a short-lived signed cookie, never in the database.
                response = redirect("accounts:api_keys")
                response.set_signed_cookie(
                    NEW_API_KEY_COOKIE,
                    f"{api_key.pk}:{secret}",
                    salt=NEW_API_KEY_COOKIE_SALT,
                    max_age=NEW_API_KEY_COOKIE_MAX_AGE,
                    path=reverse("accounts:api_keys"),
                    secure=request.is_secure(),
                    httponly=True,
                    samesite="Strict",
                )
                return response
        return _render(
            request,
            "accounts/api_keys.html",
            "api-key-panel",
            _api_keys_context(request, form),
            422,
        )
    extra = {}
    shown = request.get_signed_cookie(
        NEW_API_KEY_COOKIE,
        default="",
        salt=NEW_API_KEY_COOKIE_SALT,
        max_age=NEW_API_KEY_COOKIE_MAX_AGE,
    )
    key_id, _sep, secret = shown.partition(":")
    new_key = (
        selectors.api_keys_list(request.organization).filter(pk=key_id).first()
        if key_id.isdigit()
        else None
    )
    if new_key is not None:
        extra = {"new_key": new_key, "new_secret": secret}
    response = render(request, "accounts/api_keys.html", _api_keys_context(request, **extra))
    if shown:
        response.delete_cookie(NEW_API_KEY_COOKIE, path=reverse("accounts:api_keys"))
        response["Cache-Control"] = "no-store"
    return response


@org_page(Action.API_KEY_MANAGE)
@require_POST
def api_key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        api_key = services.api_key_revoke(actor=request.actor, api_key_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Key %(name)s revoked.") % {"name": api_key.name})
    if not request.htmx:
        return redirect("accounts:api_keys")
    return _render(request, "accounts/api_keys.html", "api-key-panel", _api_keys_context(request))


# --- SSH keys ---------------------------------------------------------------------------------


def _ssh_keys_context(request: HttpRequest, form: SshKeyForm | None = None) -> dict:
    return {"ssh_keys": selectors.ssh_keys_list(request.organization), "form": form or SshKeyForm()}


@org_page(Action.SSH_KEY_VIEW)
@require_http_methods(["GET", "POST"])
def ssh_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not request.actor.can(Action.SSH_KEY_MANAGE):
            raise DjangoPermissionDenied(_("Your role does not allow adding SSH keys."))
        form = SshKeyForm(request.POST)
        if form.is_valid():
            try:
                ssh_key = services.ssh_key_create(actor=request.actor, **form.cleaned_data)
            except SHOWN_ON_PAGE as exc:
                form.add_error("public_key", exc.message)
            else:
                messages.success(request, _("SSH key %(name)s added.") % {"name": ssh_key.name})
                if not request.htmx:
                    return redirect("accounts:ssh_keys")
                return _render(
                    request, "accounts/ssh_keys.html", "ssh-key-panel", _ssh_keys_context(request)
                )
        return _render(
            request,
            "accounts/ssh_keys.html",
            "ssh-key-panel",
            _ssh_keys_context(request, form),
            422,
        )
    return render(request, "accounts/ssh_keys.html", _ssh_keys_context(request))


@org_page(Action.SSH_KEY_MANAGE)
@require_POST
def ssh_key_delete(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.ssh_key_delete(actor=request.actor, ssh_key_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("SSH key deleted."))
    if not request.htmx:
        return redirect("accounts:ssh_keys")
    return _render(request, "accounts/ssh_keys.html", "ssh-key-panel", _ssh_keys_context(request))


# --- audit log and account --------------------------------------------------------------------


AUDIT_ACTION_GROUPS = [
    ("organization", gettext_lazy("Organisation")),
    ("membership", gettext_lazy("Members")),
    ("invitation", gettext_lazy("Invitations")),
    ("api_key", gettext_lazy("API keys")),
    ("ssh_key", gettext_lazy("SSH keys")),
    ("user", gettext_lazy("Users")),
]


@org_page(Action.AUDIT_VIEW)
def audit_log(request: HttpRequest) -> HttpResponse:
    filterset = AuditEventFilter(
        request.GET or None, selectors.audit_events_list(request.organization)
    )
    page = Paginator(filterset.qs.select_related(None), 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filter": filterset,
        "page": page,
        "query": query.urlencode(),
        "action_choices": AUDIT_ACTION_GROUPS,
    }
    return _render(request, "accounts/audit_log.html", "audit-table", context)


@login_required
def account(request: HttpRequest) -> HttpResponse:
    initial = {
        "full_name": request.user.full_name,
        "language": request.user.language or translation.get_language(),
    }
    form = AccountForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        language = form.cleaned_data["language"]
        services.user_update_profile(
            user=request.user,
            ip_address=client_ip(request),
            full_name=form.cleaned_data["full_name"],
        )
        services.user_set_language(user=request.user, language=language)
        translation.activate(language)  # "Profile saved." in the language just chosen
        response = _done(request, reverse("accounts:account"), _("Profile saved."))
        _remember_language(response, language)
        return response
    return render(request, "accounts/account.html", {"form": form})


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:account")

    def form_valid(self, form):
        response = super().form_valid(form)
        services.user_password_changed(
            user=form.user, via="account", ip_address=client_ip(self.request)
        )
        messages.success(self.request, _("Password changed."))
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")

    def form_valid(self, form):
        response = super().form_valid(form)
        services.user_password_changed(
            user=form.user, via="reset_link", ip_address=client_ip(self.request)
        )
        return response
