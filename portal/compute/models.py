"""Instances, their event history, volumes, quotas and API idempotency records.

State changes go through ``portal.compute.services``; the allowed moves are in ``lifecycle.py``.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import ApiKey, Organization
from portal.catalog.models import Allocation, GpuModel, Host, Image, InstanceType, Region
from portal.compute.lifecycle import LIVE, State

# Idle stop (opt-in per instance): GPUs below ``threshold`` percent for ``minutes`` stop it
# (``portal.compute.services.idle``). (lowest, default, highest), inclusive.
IDLE_THRESHOLD_PCT = (1, 5, 100)
IDLE_MINUTES = (10, 30, 1440)


class DesiredState(models.TextChoices):
    RUNNING = "running", _("Running")
    STOPPED = "stopped", _("Stopped")
    TERMINATED = "terminated", _("Terminated")


class ClusterState(models.TextChoices):
    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    TERMINATING = "terminating", _("Terminating")
    TERMINATED = "terminated", _("Terminated")
    FAILED = "failed", _("Failed")


class Cluster(models.Model):
    """N nodes x 8 GPUs of one type, allocated all-or-nothing as one backend job. Its nodes are
    ordinary instances (``Instance.cluster``), so metering, invoices and quotas see them."""

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="clusters"
    )
    name = models.CharField(max_length=63)
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="+")
    node_count = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=12, choices=ClusterState.choices, default=ClusterState.PENDING
    )
    status_message = models.CharField(max_length=300, blank=True)
    backend = models.CharField(max_length=40, help_text=_("Provisioning backend alias."))
    created_at = models.DateTimeField(default=timezone.now)
    running_since = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=ClusterState.values), name="compute_cluster_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(node_count__gte=1), name="compute_cluster_node_count_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def backend_id(self) -> str:
        return f"cluster-{self.pk}"


class Instance(models.Model):
    """A GPU machine of an organisation.

    ``state`` is the portal's lifecycle state; ``desired_state`` is what the customer asked
    for; ``observed_state`` is what the provisioning backend last reported (Waldur keeps the
    same three apart). ``allocation`` is the capacity it holds now (none while stopped).
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="instances"
    )
    name = models.CharField(max_length=63)
    instance_type = models.ForeignKey(InstanceType, on_delete=models.PROTECT, related_name="+")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="+")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="+")
    ssh_public_keys = models.JSONField(default=list, help_text=_("The keys it was launched with."))
    user_data = models.TextField(blank=True)
    disk_gb = models.PositiveIntegerField(
        help_text=_("Boot disk, kept (and billed) while stopped.")
    )

    state = models.CharField(
        max_length=12, choices=State.choices, default=State.PENDING, db_index=True
    )
    desired_state = models.CharField(
        max_length=10, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    observed_state = models.CharField(max_length=12, blank=True)
    observed_at = models.DateTimeField(null=True, blank=True)
    status_message = models.CharField(max_length=300, blank=True)

    backend = models.CharField(max_length=40, help_text=_("Provisioning backend alias."))
    cluster = models.ForeignKey(
        "Cluster", on_delete=models.PROTECT, null=True, blank=True, related_name="members"
    )
    allocation = models.OneToOneField(
        Allocation, null=True, blank=True, on_delete=models.SET_NULL, related_name="instance"
    )
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    # Where to log in, as the backend reports it (a forwarded port, the image's user).
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_user = models.CharField(max_length=32, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    state_changed_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When work for the current state was last enqueued.")
    )
    running_since = models.DateTimeField(null=True, blank=True)
    # Set by each start: False when it was started without GPUs (no-GPU mode, a CPU-only
    # shape billed at its own price, ``instance.cpu_only_seconds``); a launch always has GPUs.
    gpus = models.BooleanField(
        default=True, help_text=_("Whether its current or last start took its GPUs.")
    )
    terminated_at = models.DateTimeField(null=True, blank=True)
    # While stopped (and through a start that does not get it running again): when it stopped
    # after its last run, and when it is released (``portal.compute.services.release``).
    stopped_since = models.DateTimeField(null=True, blank=True)
    release_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=_("When a stopped instance is released; starting it keeps it."),
    )

    # Stopping by itself (``portal.compute.services.idle``): when its GPUs stay below the
    # threshold for the minutes given (opt-in), and once at a scheduled time (cleared then).
    idle_stop_enabled = models.BooleanField(default=False)
    idle_stop_threshold_pct = models.PositiveSmallIntegerField(default=IDLE_THRESHOLD_PCT[1])
    idle_stop_minutes = models.PositiveSmallIntegerField(default=IDLE_MINUTES[1])
    scheduled_stop_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=State.values), name="compute_instance_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(desired_state__in=DesiredState.values),
                name="compute_instance_desired_valid",
            ),
            models.UniqueConstraint(
                "organization",
                "name",
                condition=Q(state__in=sorted(s.value for s in LIVE)),
                name="compute_instance_live_name_unique",
            ),
            models.CheckConstraint(
                condition=Q(
                    idle_stop_threshold_pct__gte=IDLE_THRESHOLD_PCT[0],
                    idle_stop_threshold_pct__lte=IDLE_THRESHOLD_PCT[2],
                ),
                name="compute_instance_idle_threshold_range",
            ),
            models.CheckConstraint(
                condition=Q(
                    idle_stop_minutes__gte=IDLE_MINUTES[0], idle_stop_minutes__lte=IDLE_MINUTES[2]
                ),
                name="compute_instance_idle_minutes_range",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="compute_instance_org_time"),
            # what the idle watch reads every minute: the few instances that may stop by themselves
            models.Index(
                fields=["state"],
                condition=Q(idle_stop_enabled=True) | Q(scheduled_stop_at__isnull=False),
                name="compute_instance_stop_watch",
            ),
            models.Index(
                fields=["release_at"],
                condition=Q(state="stopped"),
                name="compute_instance_release_at",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.pk})"

    @property
    def machine_id(self) -> str:
        return f"inst-{self.pk}"

    @property
    def is_transitional(self) -> bool:
        from portal.compute.lifecycle import TRANSITIONAL

        return self.state in TRANSITIONAL

    @property
    def ssh_command(self) -> str:
        return ssh_command(self.ip_address, self.state, self.ssh_user, self.ssh_port)


def ssh_command(ip_address: str | None, state: str, user: str = "", port: int = 22) -> str:
    """How to log in to a running instance with an address (``ssh -p 2222 root@host`` when
    the backend forwards a port); empty otherwise."""
    if not ip_address or state != State.RUNNING:
        return ""
    where = f"{user or DEFAULT_SSH_USER}@{ip_address}"
    return f"ssh -p {port} {where}" if port and port != 22 else f"ssh {where}"


DEFAULT_SSH_USER = "ubuntu"  # the images' user when the backend does not say


class InstanceEvent(models.Model):
    """One step of an instance's history: a transition or something worth telling."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    from_state = models.CharField(max_length=12, blank=True)
    to_state = models.CharField(max_length=12, blank=True)
    actor_label = models.CharField(max_length=200)
    reason = models.CharField(max_length=300)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["instance", "created_at"], name="compute_event_instance_time")
        ]

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.from_state} → {self.to_state} ({self.reason})"

    @property
    def shown_reason(self) -> str:
        """The reason in the active language. Reasons are stored in English (``gettext_noop``
        msgids); one with values ("Stopped after 30 minutes idle ...") keeps its msgid and the
        values in ``detail`` (``reason_msgid``, ``reason_args``) so it can be translated too."""
        msgid, args = self.detail.get("reason_msgid"), self.detail.get("reason_args")
        if msgid and isinstance(args, dict):
            try:
                return gettext(msgid) % args
            except (KeyError, TypeError, ValueError):
                return self.reason
        return gettext(self.reason) if self.reason else ""


class ReleaseNotice(models.Model):
    """A notice that a stopped instance is going to be released, sent once per stop: one row
    per (instance, the moment it stopped, how long before the release it was due)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="+")
    stopped_since = models.DateTimeField()
    lead = models.DurationField(help_text=_("How long before the release it was due."))
    release_at = models.DateTimeField(help_text=_("The release moment the notice gave."))
    recipients = models.JSONField(default=list, blank=True)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["sent_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "stopped_since", "lead"], name="compute_release_notice_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.lead} before {self.release_at:%Y-%m-%d %H:%M}"


class VolumeState(models.TextChoices):
    AVAILABLE = "available", _("Available")
    IN_USE = "in_use", _("In use")
    DELETED = "deleted", _("Deleted")


class Volume(models.Model):
    """Persistent block storage in a region; attached to at most one instance."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="volumes")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=63)
    size_gb = models.PositiveIntegerField()
    state = models.CharField(
        max_length=10, choices=VolumeState.choices, default=VolumeState.AVAILABLE
    )
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="volumes"
    )
    delete_on_termination = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=VolumeState.values), name="compute_volume_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(state="in_use", instance__isnull=False) | ~Q(state="in_use"),
                name="compute_volume_in_use_has_instance",
            ),
            models.UniqueConstraint(
                "organization",
                "name",
                condition=~Q(state="deleted"),
                name="compute_volume_name_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size_gb} GB)"


class Quota(models.Model):
    """How many GPUs an organisation may hold at once: in total (no GPU model) or per model.

    Organisations without a total quota get ``settings.DEFAULT_GPU_QUOTA``.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="quotas")
    gpu_model = models.ForeignKey(
        GpuModel, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    max_gpus = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(gpu_model__isnull=True),
                name="compute_quota_one_total",
            ),
            models.UniqueConstraint(
                fields=["organization", "gpu_model"],
                condition=Q(gpu_model__isnull=False),
                name="compute_quota_one_per_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization}: {self.max_gpus} {self.gpu_model or 'GPUs in total'}"


class IdempotencyRecord(models.Model):
    """``Idempotency-Key`` of a create request: the same key and body give the same result."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    instance = models.ForeignKey(Instance, null=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key"], name="compute_idempotency_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.key}"


class BackendOrphan(models.Model):
    """A machine a provisioning backend runs that no live instance accounts for."""

    backend = models.CharField(max_length=40)
    machine_id = models.CharField(max_length=80)
    state = models.CharField(max_length=20)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backend", "machine_id"], name="compute_orphan_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.backend}:{self.machine_id}"
