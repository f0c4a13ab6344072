"""Operators' admin for the catalog.

- GPU models (with their MIG profiles), regions, instance types and images are edited here.
- Prices are append-only: "Add price" calls ``services.price_set``; rows are never changed or
  deleted. Each row says whether it is in force, scheduled or superseded.
- Hosts come from ``nvidia-smi`` reports ("Register host from report" calls
  ``services.host_register``); their state changes through ``services.host_set_state``
  (actions Drain, Activate, Take offline). Everything else about a host is read-only.
- Allocations and GPU slot claims are read-only: capacity changes them, never an operator.
"""

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.db.models import CharField, Count, Exists, OuterRef, Q, QuerySet, Value
from django.db.models.expressions import Case, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from portal.accounts.middleware import client_ip
from portal.accounts.types import Actor
from portal.admin_base import ReadOnlyAdmin, ReadOnlyTabularInline
from portal.catalog import services
from portal.catalog.forms import HostRegisterForm, ImageForm, InstanceTypeForm, PriceAddForm
from portal.catalog.models import (
    GPU_MEMORY_SLOTS,
    Allocation,
    Gpu,
    GpuModel,
    GpuSlotClaim,
    Host,
    HostState,
    Image,
    InstanceType,
    MigProfile,
    Price,
    Region,
)
from portal.errors import PortalError

BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]


def _operator(request: HttpRequest) -> Actor:
    """Staff acting on the catalog, which belongs to no organisation."""
    return Actor(
        user=request.user,
        organization=None,
        role=None,
        ip_address=client_ip(request),
        operator=True,
    )


class ReadOnlyInline(ReadOnlyTabularInline):
    def get_readonly_fields(self, request, obj=None):
        return self.fields


def _service_form(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    form,
    *,
    title: str,
    submit_label: str,
    template: str = "admin/catalog/service_form.html",
) -> TemplateResponse:
    """Render a form whose valid input goes to one service, in the admin's look."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "title": title,
        "form": form,
        "media": modeladmin.media + form.media,
        "submit_label": submit_label,
        "has_view_permission": modeladmin.has_view_permission(request),
    }
    return TemplateResponse(request, template, context)


# --- GPU models, regions ----------------------------------------------------------------------


class MigProfileInline(ReadOnlyInline):
    """Imported with a host's ``nvidia-smi mig -lgip``/``-lgipp`` tables."""

    model = MigProfile
    fields = [
        "name",
        "profile_id",
        "memory_gib",
        "compute_slices",
        "memory_slots",
        "placement_starts",
        "max_instances",
        "sm_count",
    ]

    @admin.display(description=_("placements"))
    def placement_starts(self, obj: MigProfile) -> str:
        return "{" + ",".join(str(s) for s in obj.placements) + "}:" + str(obj.memory_slots)


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "variant",
        "code",
        "vendor",
        "architecture",
        "memory_gb",
        "memory_type",
        "memory_bandwidth_gb_s",
        "bf16_tflops",
        "tdp_w",
        "interconnect",
        "mig_capable",
    ]
    list_filter = ["vendor", "architecture", "mig_capable"]
    search_fields = ["code", "name", "variant", "aliases"]
    inlines = [MigProfileInline]


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "country", "is_active"]
    list_filter = ["is_active", "country"]
    search_fields = ["code", "name"]

    def has_delete_permission(self, request, obj=None):
        return False  # its prices would go with it; untick "is active" instead


# --- instance types and prices ----------------------------------------------------------------

SCHEDULED, IN_FORCE, SUPERSEDED = "scheduled", "in force", "superseded"


def prices_with_status(queryset: QuerySet[Price], now=None) -> QuerySet[Price]:
    """Annotate ``price_status``: scheduled (starts after now), in force (the latest at or
    before now for its type, region and currency) or superseded. One query, no N+1."""
    now = now or timezone.now()
    newer_in_force = Price.objects.filter(
        instance_type=OuterRef("instance_type"),
        region=OuterRef("region"),
        currency=OuterRef("currency"),
        effective_from__gt=OuterRef("effective_from"),
        effective_from__lte=now,
    )
    return queryset.annotate(
        price_status=Case(
            When(effective_from__gt=now, then=Value(SCHEDULED)),
            When(Exists(newer_in_force), then=Value(SUPERSEDED)),
            default=Value(IN_FORCE),
            output_field=CharField(),
        )
    )


class PriceStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(SCHEDULED, "Scheduled"), (IN_FORCE, "In force"), (SUPERSEDED, "Superseded")]

    def queryset(self, request, queryset):
        if self.value() in {SCHEDULED, IN_FORCE, SUPERSEDED}:
            return queryset.filter(price_status=self.value())
        return queryset


class PriceInline(ReadOnlyInline):
    model = Price
    fields = [
        "region",
        "currency",
        "on_demand_per_hour",
        "spot_per_hour",
        "effective_from",
        "status",
    ]
    ordering = ["region__code", "currency", "-effective_from"]

    def get_queryset(self, request):
        return prices_with_status(super().get_queryset(request).select_related("region"))

    @admin.display(description=_("status"))
    def status(self, obj: Price) -> str:
        return obj.price_status


class MigFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("whole", "Whole GPUs"), ("mig", "MIG slice")]

    def queryset(self, request, queryset):
        if self.value() in {"whole", "mig"}:
            return queryset.filter(mig_profile__isnull=self.value() == "whole")
        return queryset


@admin.register(InstanceType)
class InstanceTypeAdmin(admin.ModelAdmin):
    form = InstanceTypeForm
    list_display = [
        "name",
        "gpu_model",
        "gpu_count",
        "mig_profile_name",
        "vcpus",
        "ram_gib",
        "interconnect",
        "spot_allowed",
        "is_active",
    ]
    list_filter = [
        "is_active",
        "spot_allowed",
        MigFilter,
        "interconnect",
        ("gpu_model", admin.RelatedOnlyFieldListFilter),
        "provider",
    ]
    search_fields = ["name", "description", "provider_name", "gpu_model__name"]
    list_select_related = ["gpu_model", "mig_profile"]
    readonly_fields = ["add_price"]
    inlines = [PriceInline]

    @admin.display(description=_("MIG profile"), ordering="mig_profile__name")
    def mig_profile_name(self, obj: InstanceType) -> str:
        return obj.mig_profile.name if obj.mig_profile else ""

    @admin.display(description=_("prices"))
    def add_price(self, obj: InstanceType) -> str:
        if obj.pk is None:
            return "Add prices once the type is saved."
        url = reverse("admin:catalog_price_add") + f"?instance_type={obj.pk}"
        return format_html('<a class="addlink" href="{}">Add a price</a>', url)

    def has_delete_permission(self, request, obj=None):
        return False  # its price history would go with it; untick "is active" instead

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "mig_profile":
            kwargs["queryset"] = MigProfile.objects.select_related("gpu_model")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """Append-only: rows are added through ``price_set`` and never changed or deleted."""

    list_display = [
        "instance_type",
        "region",
        "currency",
        "on_demand_per_hour",
        "spot_per_hour",
        "effective_from",
        "status",
        "created_at",
    ]
    list_filter = [
        PriceStatusFilter,
        "currency",
        "region",
        ("instance_type__gpu_model", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["instance_type__name", "region__code"]
    list_select_related = ["instance_type", "region"]
    date_hierarchy = "effective_from"
    fields = [
        "instance_type",
        "region",
        "currency",
        "on_demand_per_hour",
        "spot_per_hour",
        "effective_from",
        "status",
        "created_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return prices_with_status(super().get_queryset(request))

    @admin.display(description=_("status"), ordering="price_status")
    def status(self, obj: Price) -> str:
        return obj.price_status

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = PriceAddForm(request.POST)
            if form.is_valid():
                response = self._price_set(request, form)
                if response is not None:
                    return response
        else:
            form = PriceAddForm(initial=request.GET.dict())
        return _service_form(self, request, form, title=_("Add price"), submit_label=_("Add price"))

    def _price_set(self, request: HttpRequest, form: PriceAddForm) -> HttpResponse | None:
        data = form.cleaned_data
        try:
            price, created = services.price_set(
                instance_type=data["instance_type"],
                region=data["region"],
                currency=data["currency"],
                on_demand_per_hour=data["on_demand_per_hour"],
                spot_per_hour=data["spot_per_hour"],
                effective_from=data["effective_from"],
                actor=_operator(request),
            )
        except PortalError as exc:
            form.add_portal_error(exc)
            return None
        except IntegrityError:  # another row starts at exactly that moment
            form.add_error(
                "effective_from",
                _(
                    "Another price of this type in this region and currency starts at exactly "
                    "that moment. Pick another time."
                ),
            )
            return None
        if created:
            self.log_addition(request, price, "Added with price_set.")
            status = prices_with_status(Price.objects.filter(pk=price.pk)).get().price_status
            self.message_user(
                request,
                _("Price %(price)s from %(moment)s added (%(status)s).")
                % {
                    "price": price,
                    "moment": f"{price.effective_from:%Y-%m-%d %H:%M %Z}",
                    "status": status,
                },
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                _("The price at that time is already %(price)s; nothing was added.")
                % {"price": price},
                messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:catalog_price_changelist"))


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    form = ImageForm
    list_display = ["name", "os", "cuda_version", "driver_version", "is_default", "is_active"]
    list_filter = ["is_active", "is_default", "os"]
    search_fields = ["name", "description", "os"]
    filter_horizontal = ["instance_types"]


# --- hosts, GPUs and capacity -----------------------------------------------------------------


def _slots(gpu_slots: list[dict]) -> str:
    parts = []
    for slot in gpu_slots or []:
        start, size = slot.get("start", 0), slot.get("size", GPU_MEMORY_SLOTS)
        where = "whole" if size == GPU_MEMORY_SLOTS else f"slots {start}-{start + size - 1}"
        parts.append(f"{slot.get('gpu', '?')} {where}")
    return "; ".join(parts)


class GpuInline(ReadOnlyInline):
    model = Gpu
    fields = [
        "index",
        "gpu_model",
        "uuid",
        "pci_bus_id",
        "memory_mib",
        "mig_enabled",
        "claimed_slots",
    ]
    show_change_link = True

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("gpu_model")
            .annotate(claimed=Count("claims"))
        )

    @admin.display(description=_("claimed slots"))
    def claimed_slots(self, obj: Gpu) -> str:
        return f"{obj.claimed}/{GPU_MEMORY_SLOTS}"


class ActiveAllocationInline(ReadOnlyInline):
    model = Allocation
    fk_name = "host"
    fields = ["holder", "instance_type", "vcpus", "ram_gib", "slots", "created_at"]
    verbose_name = "active allocation"
    verbose_name_plural = "active allocations"
    show_change_link = True

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(released_at__isnull=True)
            .select_related("instance_type")
        )

    @admin.display(description=_("GPU slots"))
    def slots(self, obj: Allocation) -> str:
        return _slots(obj.gpu_slots)


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    """Hosts are registered from reports and change state through ``host_set_state`` only."""

    list_display = [
        "name",
        "region",
        "state",
        "gpu_count",
        "free_gpus",
        "vcpus",
        "ram_gib",
        "managed_by",
        "registered_at",
    ]
    list_filter = [
        "region",
        "state",
        "managed_by",
        ("gpus__gpu_model", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["name", "gpus__uuid", "gpus__pci_bus_id"]
    list_select_related = ["region"]
    fields = [
        "name",
        "region",
        "state",
        "vcpus",
        "ram_gib",
        "disk_gb",
        "driver_version",
        "cuda_version",
        "registered_at",
        "managed_by",
    ]
    readonly_fields = fields
    inlines = [GpuInline, ActiveAllocationInline]
    actions = ["drain", "activate", "take_offline"]
    change_list_template = "admin/catalog/host/change_list.html"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                gpu_count=Count("gpus", distinct=True),
                free_gpu_count=Count("gpus", filter=Q(gpus__claims__isnull=True), distinct=True),
            )
        )

    @admin.display(description="GPUs", ordering="gpu_count")
    def gpu_count(self, obj: Host) -> int:
        return obj.gpu_count

    @admin.display(description=_("free GPUs"), ordering="free_gpu_count")
    def free_gpus(self, obj: Host) -> int:
        """Whole GPUs with no slot claimed."""
        return obj.free_gpu_count

    # Hosts come from reports; deleting one would bypass capacity and the audit log.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_register_permission(self, request) -> bool:
        return request.user.has_perm("catalog.add_host")

    def has_set_state_permission(self, request) -> bool:
        return request.user.has_perm("catalog.change_host")

    # --- state actions

    def _set_state(self, request, queryset, state: str, done: str) -> None:
        actor = _operator(request)
        changed, unchanged = [], []
        for host in queryset.order_by("pk"):
            if host.state == state:
                unchanged.append(host.name)
                continue
            try:
                services.host_set_state(host=host, state=state, actor=actor)
            except PortalError as exc:
                self.message_user(
                    request,
                    _("Host %(host)s: %(error)s") % {"host": host, "error": exc.message},
                    messages.WARNING,
                )
            else:
                changed.append(host.name)
        if changed:
            self.message_user(
                request,
                _("%(done)s: %(hosts)s.") % {"done": done, "hosts": ", ".join(changed)},
                messages.SUCCESS,
            )
        if unchanged:
            self.message_user(
                request,
                _("Already %(state)s: %(hosts)s.")
                % {"state": state, "hosts": ", ".join(unchanged)},
                messages.INFO,
            )
        if state == HostState.OFFLINE and changed:
            busy = (
                Allocation.objects.filter(host__name__in=changed, released_at__isnull=True)
                .values("host__name")
                .annotate(n=Count("pk"))
                .order_by("host__name")
            )
            for row in busy:
                self.message_user(
                    request,
                    _(
                        "Host %(host)s still holds %(n)s active allocation(s); their instances "
                        "are not stopped by this."
                    )
                    % {"host": row["host__name"], "n": row["n"]},
                    messages.WARNING,
                )

    @admin.action(
        description=_("Drain (take no new instances)"), permissions=["set_state"], location=BOTH
    )
    def drain(self, request, queryset):
        self._set_state(request, queryset, HostState.DRAINING, _("Draining"))

    @admin.action(description=_("Activate"), permissions=["set_state"], location=BOTH)
    def activate(self, request, queryset):
        self._set_state(request, queryset, HostState.ACTIVE, _("Activated"))

    @admin.action(description=_("Take offline"), permissions=["set_state"], location=BOTH)
    def take_offline(self, request, queryset):
        self._set_state(request, queryset, HostState.OFFLINE, _("Taken offline"))

    # --- registration from a report

    def get_urls(self):
        return [
            path(
                "register/",
                self.admin_site.admin_view(self.register_view),
                name="catalog_host_register",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "has_register_permission": self.has_register_permission(request),
        }
        return super().changelist_view(request, extra_context)

    def register_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_register_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = HostRegisterForm(request.POST, request.FILES)
            if form.is_valid():
                data = form.cleaned_data
                try:
                    host = services.host_register(
                        name=data["name"],
                        region=data["region"],
                        report=data["report"],
                        vcpus=data["vcpus"],
                        ram_gib=data["ram_gib"],
                        disk_gb=data["disk_gb"],
                        mig_tables=data["mig_tables"],
                        actor=_operator(request),
                    )
                except PortalError as exc:
                    form.add_portal_error(exc)
                else:
                    self.log_addition(request, host, "Registered from an nvidia-smi report.")
                    self.message_user(request, _registered(host), messages.SUCCESS)
                    return HttpResponseRedirect(
                        reverse("admin:catalog_host_change", args=[host.pk])
                    )
        else:
            form = HostRegisterForm()
        return _service_form(
            self,
            request,
            form,
            title=_("Register host from report"),
            submit_label=_("Register host"),
            template="admin/catalog/host_upload.html",
        )


def _registered(host: Host) -> str:
    gpus = list(host.gpus.select_related("gpu_model"))
    models = sorted({str(g.gpu_model) for g in gpus})
    mig = sum(g.mig_enabled for g in gpus)
    profiles = MigProfile.objects.filter(gpu_model__gpus__host=host).distinct().count()
    return _(
        "Registered %(host)s in %(region)s: %(gpus)s GPU(s) (%(models)s), %(mig)s enabled for "
        "MIG, %(profiles)s MIG profile(s) known."
    ) % {
        "host": host.name,
        "region": host.region.code,
        "gpus": len(gpus),
        "models": ", ".join(models),
        "mig": mig,
        "profiles": profiles,
    }


# --- GPUs: MIG on or off ----------------------------------------------------------------------


@admin.register(Gpu)
class GpuAdmin(ReadOnlyAdmin):
    list_display = [
        "uuid",
        "host",
        "index",
        "gpu_model",
        "pci_bus_id",
        "memory_mib",
        "mig_enabled",
        "claimed_slots",
    ]
    list_filter = [
        "mig_enabled",
        ("gpu_model", admin.RelatedOnlyFieldListFilter),
        "host__region",
        "host__state",
    ]
    search_fields = ["uuid", "pci_bus_id", "host__name"]
    list_select_related = ["host", "gpu_model"]
    fields = [
        "host",
        "index",
        "gpu_model",
        "uuid",
        "pci_bus_id",
        "memory_mib",
        "mig_enabled",
        "claimed_slots",
    ]
    readonly_fields = fields
    actions = ["enable_mig", "disable_mig"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(claimed=Count("claims"))

    @admin.display(description=_("claimed slots"), ordering="claimed")
    def claimed_slots(self, obj: Gpu) -> str:
        return f"{obj.claimed}/{GPU_MEMORY_SLOTS}"

    def has_set_mig_permission(self, request) -> bool:
        return request.user.has_perm("catalog.change_gpu")

    def _set_mig(self, request, queryset, enabled: bool) -> None:
        changed, refused = services.gpus_set_mig(
            gpus=queryset, enabled=enabled, actor=_operator(request)
        )
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
        if enabled:
            done = _("%(n)s GPU(s) may now be sold as MIG slices.") % {"n": len(changed)}
        else:
            done = _("%(n)s GPU(s) are now sold as whole GPUs only.") % {"n": len(changed)}
        self.message_user(request, done, messages.SUCCESS)

    @admin.action(description=_("Sell as MIG slices"), permissions=["set_mig"], location=BOTH)
    def enable_mig(self, request, queryset):
        self._set_mig(request, queryset, True)

    @admin.action(
        description=_("Sell as whole GPUs only (no MIG)"), permissions=["set_mig"], location=BOTH
    )
    def disable_mig(self, request, queryset):
        self._set_mig(request, queryset, False)


class ActiveFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "Active"), ("no", "Released")]

    def queryset(self, request, queryset):
        if self.value() in {"yes", "no"}:
            return queryset.filter(released_at__isnull=self.value() == "yes")
        return queryset


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = [
        "holder",
        "instance_type",
        "host",
        "vcpus",
        "ram_gib",
        "slots",
        "created_at",
        "released_at",
    ]
    list_filter = [
        ActiveFilter,
        "host__region",
        ("host", admin.RelatedOnlyFieldListFilter),
        ("instance_type", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["holder", "host__name"]
    list_select_related = ["host", "instance_type"]
    date_hierarchy = "created_at"
    fields = [
        "holder",
        "host",
        "instance_type",
        "vcpus",
        "ram_gib",
        "slots",
        "created_at",
        "released_at",
    ]
    readonly_fields = fields

    @admin.display(description=_("GPU slots"))
    def slots(self, obj: Allocation) -> str:
        return _slots(obj.gpu_slots)


@admin.register(GpuSlotClaim)
class GpuSlotClaimAdmin(ReadOnlyAdmin):
    list_display = ["gpu_uuid", "host", "slot", "holder"]
    list_filter = [
        "gpu__host__region",
        ("gpu__host", admin.RelatedOnlyFieldListFilter),
        "slot",
    ]
    search_fields = ["gpu__uuid", "gpu__host__name", "allocation__holder"]
    list_select_related = ["gpu__host", "allocation"]
    ordering = ["gpu__host__name", "gpu__index", "slot"]
    fields = ["gpu", "slot", "allocation"]
    readonly_fields = fields

    @admin.display(description="GPU", ordering="gpu__uuid")
    def gpu_uuid(self, obj: GpuSlotClaim) -> str:
        return obj.gpu.uuid

    @admin.display(description=_("host"), ordering="gpu__host__name")
    def host(self, obj: GpuSlotClaim) -> str:
        return obj.gpu.host.name

    @admin.display(description=_("holder"), ordering="allocation__holder")
    def holder(self, obj: GpuSlotClaim) -> str:
        return obj.allocation.holder
