"""Operators' admin for instances, volumes, quotas and backend orphans.

- Instances are read-only: every change goes through ``portal.compute.services``. The actions
  "Re-sync with backend", "Force terminate" and "Mark failed" call the operator services; the
  two destructive ones ask for confirmation on a page of their own first.
- Quotas are edited here (one total per organisation, at most one per GPU model).
- Volumes and backend orphans (machines no instance accounts for) are read-only lists.
"""

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from portal.accounts.middleware import client_ip
from portal.accounts.types import Actor
from portal.admin_base import ReadOnlyAdmin, ReadOnlyTabularInline
from portal.compute import services
from portal.compute.lifecycle import FINAL
from portal.compute.models import BackendOrphan, Cluster, Instance, InstanceEvent, Quota, Volume

BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]


class InstanceEventInline(ReadOnlyTabularInline):
    model = InstanceEvent
    fields = ["created_at", "from_state", "to_state", "actor_label", "reason", "detail"]
    readonly_fields = fields
    ordering = ["created_at", "id"]


def _operator(request: HttpRequest, instance: Instance) -> Actor:
    """The staff member acting on ``instance`` (its organisation's audit log names them)."""
    return Actor.for_operator(request.user, instance.organization, client_ip(request))


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "organization",
        "state",
        "instance_type",
        "region",
        "host",
        "gpus",
        "ip_address",
        "created_at",
    ]
    list_filter = ["state", "gpus", "host", "region", "organization"]
    list_select_related = ["organization", "instance_type", "region", "host"]
    search_fields = ["name", "organization__name", "organization__slug", "host__name", "ip_address"]
    date_hierarchy = "created_at"
    inlines = [InstanceEventInline]
    actions = ["resync", "force_terminate", "mark_failed"]
    fieldsets = [
        (None, {"fields": ["name", "organization", "instance_type", "region", "image"]}),
        (
            "State",
            {
                "fields": [
                    "state",
                    "desired_state",
                    "observed_state",
                    "observed_at",
                    "status_message",
                    "state_changed_at",
                    "dispatched_at",
                    "stopped_since",
                    "release_at",
                ]
            },
        ),
        (
            "Placement",
            {"fields": ["backend", "host", "allocation", "gpus", "ip_address", "disk_gb"]},
        ),
        (
            "Automatic stop",
            {
                "fields": [
                    "idle_stop_enabled",
                    "idle_stop_threshold_pct",
                    "idle_stop_minutes",
                    "scheduled_stop_at",
                ]
            },
        ),
        (
            "History",
            {
                "fields": [
                    "created_at",
                    "created_by",
                    "created_by_api_key",
                    "running_since",
                    "terminated_at",
                ]
            },
        ),
        (
            "Launch input",
            {"fields": ["ssh_public_keys", "user_data"], "classes": ["collapse"]},
        ),
    ]

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm("compute.change_instance")

    def _each(self, request, queryset: QuerySet[Instance], call, done: str) -> None:
        changed, failed = [], []
        for instance in queryset.select_related("organization").order_by("pk"):
            try:
                call(instance)
            except Exception as exc:  # a backend error for one must not stop the rest
                message = getattr(exc, "message", None) or str(exc)
                failed.append(f"{instance.name} ({instance.pk}): {message}")
            else:
                changed.append(f"{instance.name} ({instance.pk})")
        if changed:
            self.message_user(
                request,
                _("%(done)s: %(instances)s.") % {"done": done, "instances": ", ".join(changed)},
                messages.SUCCESS,
            )
        for line in failed:
            self.message_user(request, _("Failed for %(line)s") % {"line": line}, messages.ERROR)

    def _confirm(
        self, request, queryset: QuerySet[Instance], action: str, title: str, warning: str
    ):
        """A page asking the operator to confirm a destructive action (as "delete selected")."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "warning": warning,
            "action": action,
            "instances": list(queryset.select_related("organization").order_by("pk")),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, "compute/admin/confirm_action.html", context)

    @admin.action(description=_("Re-sync with backend"), permissions=["operate"], location=BOTH)
    def resync(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda i: services.operator_resync(actor=_operator(request, i), instance_id=i.pk),
            _("Re-sync requested"),
        )

    @admin.action(description=_("Force terminate"), permissions=["operate"], location=BOTH)
    def force_terminate(self, request, queryset):
        live = queryset.exclude(state__in=[s.value for s in FINAL])
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request,
                live,
                "force_terminate",
                _("Force terminate instances"),
                _(
                    "The backend is told to terminate each machine (best effort); its GPUs are "
                    "released and it is recorded as terminated, whatever its state. The customer "
                    "loses the machine and its boot disk."
                ),
            )
        self._each(
            request,
            live,
            lambda i: services.operator_force_terminate(
                actor=_operator(request, i), instance_id=i.pk
            ),
            _("Force-terminated"),
        )

    @admin.action(description=_("Mark failed"), permissions=["operate"], location=BOTH)
    def mark_failed(self, request, queryset):
        live = queryset.exclude(state__in=[s.value for s in FINAL])
        if request.POST.get("confirm") != "yes":
            return self._confirm(
                request,
                live,
                "mark_failed",
                _("Mark instances failed"),
                _(
                    "Each instance is marked failed: its GPUs are released and its volumes "
                    "detached. The backend is not asked to do anything."
                ),
            )
        reason = (request.POST.get("reason") or "").strip()[:200]
        self._each(
            request,
            live,
            lambda i: services.operator_mark_failed(
                actor=_operator(request, i), instance_id=i.pk, reason=reason
            ),
            _("Marked failed"),
        )


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["organization", "gpu_model_display", "max_gpus"]
    list_filter = ["gpu_model"]
    list_select_related = ["organization", "gpu_model"]
    search_fields = ["organization__name", "organization__slug"]
    autocomplete_fields = ["organization"]
    fields = ["organization", "gpu_model", "max_gpus"]

    @admin.display(description=_("GPU model"), ordering="gpu_model__code")
    def gpu_model_display(self, obj: Quota) -> str:
        return str(obj.gpu_model) if obj.gpu_model_id else str(_("All GPUs (total)"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "gpu_model":
            field.empty_label = _("All GPUs (total)")
            field.help_text = _("Leave empty for the organisation's total across all GPU models.")
        return field


@admin.register(Volume)
class VolumeAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "organization",
        "region",
        "size_gb",
        "state",
        "instance",
        "created_at",
        "deleted_at",
    ]
    list_filter = ["state", "region", "organization"]
    list_select_related = ["organization", "region", "instance"]
    search_fields = ["name", "organization__name", "instance__name"]


@admin.register(BackendOrphan)
class BackendOrphanAdmin(ReadOnlyAdmin):
    list_display = ["machine_id", "backend", "state", "first_seen", "last_seen", "detail"]
    list_filter = ["backend", "state"]
    search_fields = ["machine_id"]


@admin.register(Cluster)
class ClusterAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "organization",
        "instance_type",
        "region",
        "node_count",
        "state",
        "backend",
        "created_at",
        "running_since",
        "terminated_at",
    ]
    list_filter = ["state", "region", "organization"]
    list_select_related = ["organization", "instance_type", "region"]
    search_fields = ["name", "organization__name"]
