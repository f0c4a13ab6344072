"""Instance and volume pages. One view per page; htmx requests get the named partial back.

Views parse a form, call one service or selector, and render. Rows and status panels of
instances in a transitional state poll their own partial every 2.5 s (as Horizon does); a
settled one is rendered without the trigger, so polling stops by itself.
"""

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from portal.accounts import selectors as account_selectors
from portal.accounts.roles import Action
from portal.accounts.views import org_page
from portal.api.errors import error_body
from portal.catalog import selectors as catalog_selectors
from portal.catalog import services as catalog_services
from portal.catalog.capacity import CapacityUnavailable
from portal.catalog.selectors import CatalogQuery
from portal.compute import presenters, selectors, services, stages
from portal.compute.errors import ComputeErrorCode
from portal.compute.forms import (
    HOURS_PER_MONTH,
    LAUNCH_ERROR_FIELDS,
    STOP_FIELDS,
    InstanceFilterForm,
    LaunchForm,
    RenameForm,
    StopSettingsForm,
    TerminateForm,
    VolumeForm,
)
from portal.compute.lifecycle import FINAL, LIVE, State
from portal.compute.lifecycle import Action as InstanceAction
from portal.compute.models import Instance, VolumeState
from portal.compute.readiness import launch_credit
from portal.compute.types import InstancePagePanel
from portal.errors import SHOWN_ON_PAGE, NotFound, PortalError
from portal.money import format_amount, with_currency

PAGE_SIZE = 25
# States whose page shows how the latest launch or start went (placing, booting, ready).
STAGED = frozenset(
    {
        State.PENDING,
        State.PROVISIONING,
        State.STARTING,
        State.RUNNING,
        State.REBOOTING,
        State.FAILED,
    }
)
POLL_TRIGGER = "every 2.5s"
# What an action or launch may be refused with, shown on the page (quota and capacity errors
# are conflicts, so SHOWN_ON_PAGE covers them; named here for readers).
ACTION_ERRORS = SHOWN_ON_PAGE
BUTTON_ACTIONS = (InstanceAction.START, InstanceAction.STOP, InstanceAction.REBOOT)
CONFIRM = {
    InstanceAction.START: gettext_lazy("Start {name}? Billing for its GPUs resumes once it runs."),
    InstanceAction.STOP: gettext_lazy(
        "Stop {name}? Its GPUs are released; the boot disk and volumes are kept."
    ),
    InstanceAction.REBOOT: gettext_lazy("Reboot {name}? Running processes are interrupted."),
}
START_WITHOUT_GPUS = gettext_lazy("Start without GPUs")
CONFIRM_WITHOUT_GPUS = gettext_lazy(
    "Start {name} without GPUs? It gets {vcpus} vCPUs and {ram} GiB of RAM and no GPU, for "
    "copying data or setting up, billed at the no-GPU price of {price}/h while it runs. Stop it "
    "and start it again to get its GPUs back."
)
DONE_WITHOUT_GPUS = gettext_lazy("Starting {name} without GPUs.")
DONE = {
    InstanceAction.START: gettext_lazy("Starting {name}."),
    InstanceAction.STOP: gettext_lazy("Stopping {name}."),
    InstanceAction.REBOOT: gettext_lazy("Rebooting {name}."),
    InstanceAction.TERMINATE: gettext_lazy(
        "Terminating {name}. Its GPUs are released when it is gone."
    ),
}


def _render(request: HttpRequest, template: str, partial: str, context: dict, status: int = 200):
    """The whole page, or just ``partial`` for an htmx request."""
    name = f"{template}#{partial}" if request.htmx else template
    return render(request, name, context, status=status)


# --- instances list ---------------------------------------------------------------------------

FILTERS = {
    "all": None,
    "live": sorted({s.value for s in LIVE} | {State.TERMINATING.value}),
    "terminated": sorted(s.value for s in FINAL),
}


# Past any count, and an OFFSET the database takes (a longer ?page= is the last page, as ever).
MAX_PAGE = 2**62 // PAGE_SIZE


def _expected_page(number: str | None) -> slice | None:
    """The rows ``Paginator.get_page(number)`` will slice when ``number`` is a page in range:
    what is not a whole number is page 1, as ``get_page`` reads it; None for a number below 1
    or past any count (the paginator counts first and gives the last page)."""
    try:
        wanted = int(number or 1)
    except ValueError:
        wanted = 1
    if not 1 <= wanted <= MAX_PAGE:
        return None
    start = (wanted - 1) * PAGE_SIZE
    return slice(start, start + PAGE_SIZE)


@org_page(Action.INSTANCE_VIEW)
def instance_list(request: HttpRequest) -> HttpResponse:
    filter_form = InstanceFilterForm(request.GET or None)
    state = filter_form.value()
    number = request.GET.get("page")
    rows = selectors.TableRows(request.organization, FILTERS[state], _expected_page(number))
    page = Paginator(rows, PAGE_SIZE).get_page(number)  # one query for a page in range
    params = urlencode({"state": state}) if state != "all" else ""
    context = {
        "filter_form": filter_form,
        "state_filter": state,
        "page": page,
        "rows": presenters.rows_html(page.object_list, POLL_TRIGGER),
        "links": presenters.page_links(page, params),
        "any_instance": page.paginator.count > 0
        or selectors.instances_table(request.organization).exists(),
    }
    return _render(request, "compute/instances.html", "instance-table", context)


@org_page(Action.INSTANCE_VIEW)
@require_GET
def instance_row(request: HttpRequest, pk: int) -> HttpResponse:
    """One row of the list (what a transitional row polls)."""
    instance = selectors.instance_get(request.organization, pk)
    if not request.htmx:
        return redirect("compute:instance_detail", pk=instance.pk)
    return HttpResponse(presenters.instance_row_html(instance, POLL_TRIGGER))


# --- launch -----------------------------------------------------------------------------------


def _launch_choices(request: HttpRequest) -> dict:
    org = request.organization
    offers = catalog_selectors.filter_offers(
        catalog_selectors.catalog_offers(currency=org.currency), CatalogQuery()
    )
    return {
        "offers": offers,
        "images": list(catalog_selectors.images_list()),
        "ssh_keys": list(account_selectors.ssh_keys_list(org)),
        "volumes": list(
            selectors.volumes_list(org).filter(state=VolumeState.AVAILABLE).order_by("name")
        ),
    }


def _launch_initial(request: HttpRequest, choices: dict) -> dict:
    """Initial values: what the query string says (``?type=`` from the catalog, or the
    fields an htmx refresh sends), else the best guess (a type available now, its region with
    most room, the default image, the only SSH key)."""
    query = request.GET
    offers = {offer.name: offer for offer in choices["offers"]}
    type_name = query.get("instance_type") or query.get("type") or ""
    if type_name not in offers:
        ranked = sorted(choices["offers"], key=lambda o: o.sold_out)  # stable: cheapest first
        type_name = ranked[0].name if ranked else ""
    initial = {"instance_type": type_name}
    offer = offers.get(type_name)
    region = query.get("region", "")
    if offer is not None and region not in {q.region for q in offer.prices}:
        ranked = sorted(
            (q.region for q in offer.prices),
            key=lambda code: (-offer.available.get(code, 0), code),
        )
        region = ranked[0] if ranked else ""
    initial["region"] = region
    images = {image.name for image in choices["images"]}
    default_image = next((i.name for i in choices["images"] if i.is_default), "")
    image = query.get("image", "")
    initial["image"] = image if image in images else default_image
    keys = [k for k in query.getlist("ssh_key_ids") if k.isdigit()]
    if not keys and len(choices["ssh_keys"]) == 1:
        keys = [choices["ssh_keys"][0].pk]
    initial["ssh_key_ids"] = keys
    for field in ("name", "volume_id", "new_volume_gb", "user_data"):
        if query.get(field):
            initial[field] = query[field]
    return initial


def _price_summary(form: LaunchForm, type_name: str, region: str) -> dict | None:
    offer = form.offers.get(type_name or "")
    if offer is None:
        return None
    hourly = catalog_selectors.offer_price(offer, region) if region else None
    summary = {"offer": offer, "region": region, "currency": offer.currency, "hourly": hourly}
    if hourly is not None:
        summary["monthly"] = hourly * HOURS_PER_MONTH
        summary["free"] = offer.available.get(region, 0)
        summary["other_regions"] = [r for r in offer.regions_with_capacity if r != region]
    return summary


def _launch_htmx_attrs(form: LaunchForm) -> None:
    url = reverse("compute:instance_launch")
    common = {
        "hx-get": url,
        "hx-trigger": "change",
        "hx-include": "#id_instance_type, #id_region",
        "hx-swap": "outerHTML",
        "hx-sync": "closest form:abort",
    }
    form.fields["instance_type"].widget.attrs.update({**common, "hx-target": "#region-field"})
    form.fields["region"].widget.attrs.update({**common, "hx-target": "#price-summary"})
    for name in ("instance_type", "region"):
        form.fields[name].widget.attrs["aria-controls"] = "price-summary"


def _alternatives(request: HttpRequest, exc: CapacityUnavailable, data) -> list[tuple[str, str]]:
    """Links that prefill the form with a type/region that has room now."""
    details = exc.details or {}
    keep = {"name": data.get("name", ""), "ssh_key_ids": data.getlist("ssh_key_ids")}
    base = reverse("compute:instance_launch")
    links = []
    for region in details.get("regions_with_capacity", []):
        query = urlencode({"type": data.get("instance_type"), "region": region, **keep}, True)
        label = _("%(type)s in %(region)s") % {"type": data.get("instance_type"), "region": region}
        links.append((label, f"{base}?{query}"))
    for type_name in details.get("similar_types_available_here", []):
        query = urlencode({"type": type_name, "region": data.get("region"), **keep}, True)
        label = _("%(type)s in %(region)s") % {"type": type_name, "region": data.get("region")}
        links.append((label, f"{base}?{query}"))
    return links


@org_page(Action.INSTANCE_MANAGE)
def instance_launch(request: HttpRequest) -> HttpResponse:
    choices = _launch_choices(request)
    template = "compute/instance_launch.html"
    alternatives = []
    top_up_url = ""  # a check that refused for credit says where to top up
    verification_url = ""
    status = 200
    if request.method == "POST":
        form = LaunchForm(request.POST, **choices)
        if form.is_valid():
            data = form.cleaned_data
            launch = services.LaunchRequest(
                name=data["name"],
                instance_type=data["instance_type"],
                region=data["region"],
                image=data["image"],
                ssh_key_ids=tuple(data["ssh_key_ids"]),
                volume_ids=(data["volume_id"],) if data.get("volume_id") else (),
                new_volume_gb=data.get("new_volume_gb"),
                user_data=data.get("user_data") or "",
                idle_stop_enabled=data["idle_stop_enabled"],
                idle_stop_threshold_pct=data["idle_stop_threshold_pct"],
                idle_stop_minutes=data["idle_stop_minutes"],
                scheduled_stop_at=data.get("scheduled_stop_at"),
            )
            try:
                instance, _created = services.instance_launch(actor=request.actor, request=launch)
            except NotFound:
                raise
            except PortalError as exc:
                details = exc.details if isinstance(exc.details, dict) else {}
                fields = {k: v for k, v in details.items() if k in LAUNCH_ERROR_FIELDS}
                if exc.code == ComputeErrorCode.INVALID and fields:
                    for key, message in fields.items():
                        form.add_error(LAUNCH_ERROR_FIELDS[key], message)
                elif exc.code == ComputeErrorCode.NAME_TAKEN:
                    form.add_error("name", exc.message)
                else:
                    form.add_error(None, exc.message)
                top_up_url = str(details.get("top_up_url") or "")
                # a check that refused for verification says where to verify (a 403)
                verification_url = str(details.get("verification_url") or "")
                if isinstance(exc, CapacityUnavailable):
                    alternatives = _alternatives(request, exc, request.POST)
            else:
                messages.success(
                    request,
                    _("Launching %(name)s.") % {"name": instance.name},
                )
                url = reverse("compute:instance_detail", args=[instance.pk])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        # refused for verification: a 403 (htmx swaps only 2xx and 422, so it gets the form)
        status = 403 if verification_url and not request.htmx else 422
        type_name, region = request.POST.get("instance_type", ""), request.POST.get("region", "")
    else:
        initial = _launch_initial(request, choices)
        form = LaunchForm(initial=initial, **choices)
        type_name, region = initial["instance_type"], initial["region"]
    _launch_htmx_attrs(form)
    summary = _price_summary(form, type_name, region)
    context = {
        "form": form,
        "summary": summary,
        "credit": launch_credit(request.organization, summary and summary.get("hourly")),
        "alternatives": alternatives,
        "top_up_url": top_up_url,
        "verification_url": verification_url,
        "hours_per_month": HOURS_PER_MONTH,
    }
    if request.htmx and request.method == "GET":
        # A type or region changed: new regions (for a new type) and the price.
        partial = "type-change" if request.htmx.trigger_name == "instance_type" else "price-summary"
        return render(request, f"{template}#{partial}", context)
    return _render(request, template, "launch-form", context, status)


# --- instance detail and actions --------------------------------------------------------------


def _detail_context(
    request: HttpRequest,
    instance: Instance,
    *,
    terminate_form: TerminateForm | None = None,
    rename_form: RenameForm | None = None,
    stop_form: StopSettingsForm | None = None,
) -> dict:
    allowed = services.actions_offered(instance.state, instance.backend)
    can_manage = request.actor.can(Action.INSTANCE_MANAGE)
    buttons = [
        {
            "action": action.value,
            "id": f"action-{action.value}",
            "label": action.label,
            "confirm": CONFIRM[action].format(name=instance.name),
            "danger": action != InstanceAction.START,
        }
        for action in BUTTON_ACTIONS
        if action.value in allowed
    ]
    no_gpu = _no_gpu_offer(request, instance)
    if can_manage and no_gpu and InstanceAction.START.value in allowed:
        buttons.insert(
            1,
            {
                "action": InstanceAction.START.value,
                "id": "action-start-without-gpus",
                "label": START_WITHOUT_GPUS,
                "confirm": CONFIRM_WITHOUT_GPUS.format(name=instance.name, **no_gpu),
                "danger": True,
                "gpus": False,
            },
        )
    events = list(selectors.instance_events(instance))
    boot = stages.boot_stages(events, timezone.now()) if instance.state in STAGED else None
    if boot is not None and instance.state == State.FAILED and boot.ready_at is not None:
        boot = None  # it failed after it was ready: the events tell
    return {
        "instance": instance,
        "no_gpu": no_gpu,
        "events": events,
        "boot": boot,
        "volumes": list(selectors.volumes_list(request.organization).filter(instance=instance)),
        "buttons": buttons if can_manage else [],
        "can_terminate": can_manage and InstanceAction.TERMINATE.value in allowed,
        "can_manage": can_manage,
        "can_rename": can_manage and instance.state not in FINAL,
        "can_edit_stop": can_manage and instance.state not in FINAL,
        "terminate_form": terminate_form or TerminateForm(instance_name=instance.name),
        "rename_form": rename_form or RenameForm(initial={"name": instance.name}),
        "stop_form": stop_form or StopSettingsForm(initial=_stop_initial(instance)),
        "poll_trigger": POLL_TRIGGER,
        "release": presenters.release_countdown(services.release_at(instance), timezone.now()),
    }


def _stop_initial(instance: Instance) -> dict:
    return {name: getattr(instance, name) for name in STOP_FIELDS}


def _no_gpu_offer(request: HttpRequest, instance: Instance) -> dict | None:
    """What no-GPU mode gives this instance and costs per hour (its region's no-GPU price in
    the organisation's currency), when it is stopped and may start that way or already runs
    that way; else None. One query."""
    shape = None
    if instance.state == State.STOPPED:
        shape = services.no_gpu_shape(instance.instance_type)
    elif not instance.gpus and instance.allocation_id is not None:
        shape = instance.allocation
    if shape is None:
        return None
    currency = request.organization.currency
    price = services.no_gpu_price(request.organization, instance)
    if price is None:
        return None
    return {
        "vcpus": shape.vcpus,
        "ram": shape.ram_gib,
        "price": with_currency(format_amount(price, currency), currency),
    }


@org_page(Action.INSTANCE_VIEW)
@require_GET
def instance_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instance = selectors.instance_get(request.organization, pk)
    context = _detail_context(request, instance)
    if not request.htmx:  # the status panel's polls do not show telemetry
        for path in settings.COMPUTE_INSTANCE_PAGE_PANELS:
            panel: InstancePagePanel = import_string(path)
            context.update(panel(instance))
        context["price"] = catalog_services.price_in_force(
            instance_type=instance.instance_type,
            region=instance.region,
            currency=request.organization.currency,
        )
    return _render(request, "compute/instance_detail.html", "instance-status", context)


def _after_action(request: HttpRequest, pk: int, status: int = 200, **forms) -> HttpResponse:
    """Plain posts go back to the page; htmx gets the status panel and the messages."""
    if not request.htmx and status == 200:
        return redirect("compute:instance_detail", pk=pk)
    instance = selectors.instance_get(request.organization, pk)
    context = _detail_context(request, instance, **forms)
    return _render(request, "compute/instance_detail.html", "action-result", context, status)


@org_page(Action.INSTANCE_MANAGE)
@require_POST
def instance_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in {a.value for a in BUTTON_ACTIONS}:
        raise Http404(_("No such action."))
    instance = selectors.instance_get(request.organization, pk)
    gpus = request.POST.get("gpus", "true") != "false"  # "Start without GPUs" sends false
    try:
        services.instance_action(
            actor=request.actor, instance_id=instance.pk, action=action, gpus=gpus
        )
    except ACTION_ERRORS as exc:
        messages.error(request, exc.message)
    else:
        done = DONE[InstanceAction(action)] if gpus else DONE_WITHOUT_GPUS
        messages.success(request, done.format(name=instance.name))
    return _after_action(request, instance.pk)


@org_page(Action.INSTANCE_MANAGE)
@require_POST
def instance_terminate(request: HttpRequest, pk: int) -> HttpResponse:
    instance = selectors.instance_get(request.organization, pk)
    form = TerminateForm(request.POST, instance_name=instance.name)
    if not form.is_valid():
        return _after_action(request, instance.pk, status=422, terminate_form=form)
    try:
        services.instance_action(actor=request.actor, instance_id=instance.pk, action="terminate")
    except ACTION_ERRORS as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, DONE[InstanceAction.TERMINATE].format(name=instance.name))
    return _after_action(request, instance.pk)


@org_page(Action.INSTANCE_MANAGE)
@require_POST
def instance_rename(request: HttpRequest, pk: int) -> HttpResponse:
    instance = selectors.instance_get(request.organization, pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        try:
            renamed = services.instance_rename(
                actor=request.actor, instance_id=instance.pk, name=form.cleaned_data["name"]
            )
        except SHOWN_ON_PAGE as exc:
            form.add_error("name", exc.message)
        else:
            if renamed.name != instance.name:
                messages.success(
                    request,
                    _("Renamed %(old)s to %(new)s.") % {"old": instance.name, "new": renamed.name},
                )
            url = reverse("compute:instance_detail", args=[instance.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    context = _detail_context(request, instance, rename_form=form)
    return _render(request, "compute/instance_detail.html", "rename-form", context, 422)


@org_page(Action.INSTANCE_MANAGE)
@require_POST
def instance_stop_settings(request: HttpRequest, pk: int) -> HttpResponse:
    """Idle stop and the scheduled shutdown: htmx gets the panel back, a plain post the page."""
    instance = selectors.instance_get(request.organization, pk)
    form = StopSettingsForm(request.POST)
    saved = False
    if form.is_valid():
        try:
            instance = services.instance_stop_settings_set(
                actor=request.actor, instance_id=instance.pk, **form.cleaned_data
            )
        except SHOWN_ON_PAGE as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            fields = {k: v for k, v in details.items() if k in form.fields}
            for key, message in fields.items():
                form.add_error(key, message)
            if not fields:
                form.add_error(None, exc.message)
        else:
            saved = True
            if not request.htmx:
                messages.success(request, _("Automatic stop settings saved."))
                return redirect("compute:instance_detail", pk=instance.pk)
    context = _detail_context(request, instance, stop_form=None if saved else form)
    context["stop_saved"] = saved
    status = 200 if saved else 422
    return _render(request, "compute/instance_detail.html", "stop-settings", context, status)


# --- volumes ----------------------------------------------------------------------------------


def _volume_region(organization, regions) -> str:
    """Where a new volume most likely goes: the region of the organisation's latest instance,
    else the first region where an instance fits now, else the first region."""
    codes = [region.code for region in regions]
    latest = selectors.latest_instance_region(organization)
    if latest in codes:
        return latest
    free = catalog_selectors.regions_with_capacity(currency=organization.currency)
    return next((code for code in codes if code in free), codes[0] if codes else "")


def _volumes_context(request: HttpRequest, form: VolumeForm | None = None) -> dict:
    organization = request.organization
    if form is None:
        regions = list(catalog_selectors.regions_list())
        form = VolumeForm(
            regions=regions, initial={"region": _volume_region(organization, regions)}
        )
    return {
        "volumes": selectors.volumes_list(organization),
        "form": form,
        "storage_price": catalog_selectors.storage_price_per_gb_month(organization.currency),
        "currency": organization.currency,
    }


@org_page(Action.INSTANCE_VIEW)
def volumes(request: HttpRequest) -> HttpResponse:
    template = "compute/volumes.html"
    if request.method == "POST":
        if not request.actor.can(Action.INSTANCE_MANAGE):
            raise DjangoPermissionDenied(_("Your role does not allow creating volumes."))
        form = VolumeForm(request.POST, regions=list(catalog_selectors.regions_list()))
        if form.is_valid():
            try:
                volume = services.volume_create(actor=request.actor, **form.cleaned_data)
            except SHOWN_ON_PAGE as exc:
                details = exc.details if isinstance(exc.details, dict) else {}
                fields = {k: v for k, v in details.items() if k in form.fields}
                for key, message in fields.items():
                    form.add_error(key, message)
                if not fields:
                    form.add_error(
                        "name" if exc.code == ComputeErrorCode.NAME_TAKEN else None, exc.message
                    )
            else:
                messages.success(request, _("Volume %(name)s created.") % {"name": volume.name})
                if not request.htmx:
                    return redirect("compute:volumes")
                return _render(request, template, "volume-panel", _volumes_context(request))
        return _render(request, template, "volume-panel", _volumes_context(request, form), 422)
    return render(request, template, _volumes_context(request))


@org_page(Action.INSTANCE_MANAGE)
@require_POST
def volume_delete(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.volume_delete(actor=request.actor, volume_id=pk)
    except SHOWN_ON_PAGE as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Volume deleted."))
    if not request.htmx:
        return redirect("compute:volumes")
    return _render(request, "compute/volumes.html", "volume-panel", _volumes_context(request))


# --- What machines call --------------------------------------------------------------------


@csrf_exempt
@require_POST
def phone_home(request: HttpRequest, token: str) -> HttpResponse:
    """cloud-init's ``phone_home`` from inside a machine: its URL is its credential (signed,
    single-use), so it needs no session and no CSRF token. Answers JSON, as the API does."""
    try:
        services.instance_phone_home(token=token, posted=request.POST)
    except PortalError as exc:
        return JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status)
    return JsonResponse({"received": True})
