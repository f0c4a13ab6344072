from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.compute.lifecycle import State
from portal.compute.models import (
    DEFAULT_SSH_USER,
    IDLE_MINUTES,
    IDLE_THRESHOLD_PCT,
    Cluster,
    Instance,
    InstanceEvent,
    Volume,
    ssh_command,
)
from portal.compute.services import actions_offered

# The automatic stop settings (``portal.compute.services.idle``), shown and set through the API.
STOP_FIELDS = (
    "idle_stop_enabled",
    "idle_stop_threshold_pct",
    "idle_stop_minutes",
    "scheduled_stop_at",
)
_DATETIME = serializers.DateTimeField()


def release_at(state: str, moment):
    """Only a stopped instance has a release moment (one that is starting keeps its own until
    it runs, but is not shown one)."""
    return moment if state == State.STOPPED else None


class InstanceSerializer(serializers.ModelSerializer):
    status = serializers.CharField(source="state", help_text=_("The lifecycle state."))
    instance_type = serializers.CharField(source="instance_type.name")
    region = serializers.CharField(source="region.code")
    image = serializers.CharField(source="image.name")
    ip = serializers.IPAddressField(source="ip_address", allow_null=True)
    ssh_command = serializers.CharField()
    ssh_port = serializers.IntegerField(help_text=_("The port to log in on (22 unless forwarded)."))
    ssh_user = serializers.SerializerMethodField(help_text=_("The user to log in as."))
    actions = serializers.SerializerMethodField(help_text=_("Actions allowed in this state."))
    release_at = serializers.SerializerMethodField(
        help_text=_(
            "When a stopped instance is released (terminated; its volumes are kept) unless it "
            "is started; null when it is not stopped."
        )
    )
    gpus = serializers.BooleanField(
        help_text=_(
            "False when it was started without GPUs (no-GPU mode: a CPU-only shape at the "
            "no-GPU price); a later start with GPUs sets it back to true."
        )
    )

    class Meta:
        model = Instance
        fields = [
            "id",
            "name",
            "status",
            "desired_state",
            "observed_state",
            "status_message",
            "instance_type",
            "region",
            "image",
            "ip",
            "ssh_command",
            "ssh_port",
            "ssh_user",
            "gpus",
            "disk_gb",
            "actions",
            "created_at",
            "running_since",
            "terminated_at",
            *STOP_FIELDS,
            "release_at",
        ]
        read_only_fields = fields

    def get_ssh_user(self, instance) -> str:
        return instance.ssh_user or DEFAULT_SSH_USER

    def get_actions(self, instance) -> list[str]:
        return actions_offered(instance.state, instance.backend)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_release_at(self, instance) -> str | None:
        return _DATETIME.to_representation(release_at(instance.state, instance.release_at))


def instance_list_rows(rows) -> list[dict]:
    """``InstanceSerializer``'s output for rows of ``selectors.instances_list_values``, without
    a model instance or a serializer field per value (the list's cost is its rows)."""
    when = _DATETIME.to_representation
    return [
        {
            "id": row["id"],
            "name": row["name"],
            "status": row["state"],
            "desired_state": row["desired_state"],
            "observed_state": row["observed_state"],
            "status_message": row["status_message"],
            "instance_type": row["instance_type__name"],
            "region": row["region__code"],
            "image": row["image__name"],
            "ip": row["ip_address"],
            "ssh_command": ssh_command(
                row["ip_address"], row["state"], row["ssh_user"], row["ssh_port"]
            ),
            "ssh_port": row["ssh_port"],
            "ssh_user": row["ssh_user"] or DEFAULT_SSH_USER,
            "gpus": row["gpus"],
            "disk_gb": row["disk_gb"],
            "actions": actions_offered(row["state"], row["backend"]),
            "created_at": when(row["created_at"]),
            "running_since": when(row["running_since"]),
            "terminated_at": when(row["terminated_at"]),
            "idle_stop_enabled": row["idle_stop_enabled"],
            "idle_stop_threshold_pct": row["idle_stop_threshold_pct"],
            "idle_stop_minutes": row["idle_stop_minutes"],
            "scheduled_stop_at": when(row["scheduled_stop_at"]),
            "release_at": when(release_at(row["state"], row["release_at"])),
        }
        for row in rows
    ]


def _stop_fields() -> dict[str, serializers.Field]:
    """The automatic stop settings as request fields (all optional)."""
    return {
        "idle_stop_enabled": serializers.BooleanField(
            required=False,
            help_text=_(
                "Stop it when every sample of its GPUs in the last idle_stop_minutes is below "
                "idle_stop_threshold_pct. Never on missing data: without samples covering the "
                "whole window it keeps running. A MIG slice is judged by its whole GPU."
            ),
        ),
        "idle_stop_threshold_pct": serializers.IntegerField(
            required=False,
            min_value=IDLE_THRESHOLD_PCT[0],
            max_value=IDLE_THRESHOLD_PCT[2],
            help_text=_("GPU utilisation below which it counts as idle (default 5)."),
        ),
        "idle_stop_minutes": serializers.IntegerField(
            required=False,
            min_value=IDLE_MINUTES[0],
            max_value=IDLE_MINUTES[2],
            help_text=_("How long it must stay idle before it stops (default 30)."),
        ),
        "scheduled_stop_at": serializers.DateTimeField(
            required=False,
            allow_null=True,
            help_text=_("Stop it once at this time (in the future); null for none."),
        ),
    }


class InstanceStopSettingsSerializer(serializers.Serializer):
    """What PATCH /api/v1/instances/{id}/auto-stop changes: the fields given, at least one."""

    def get_fields(self):
        return _stop_fields()

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError(
                _("Give at least one of %(fields)s.") % {"fields": ", ".join(STOP_FIELDS)}
            )
        return attrs


class InstanceCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    instance_type = serializers.CharField(
        max_length=60, help_text=_("Its name, e.g. gpu_1x_h100_sxm5.")
    )
    region = serializers.CharField(max_length=40, help_text=_("Its code, e.g. us-east-1."))
    image = serializers.CharField(
        max_length=80, required=False, allow_blank=True, help_text=_("Default image if empty.")
    )
    ssh_key_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        min_length=1,
        max_length=20,
        help_text=(
            _(
                "The organisation's SSH keys (ids from GET /api/v1/ssh-keys) allowed to log in; "
                "at least one is needed to reach the machine."
            )
        ),
    )
    volume_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        max_length=8,
    )
    new_volume_gb = serializers.IntegerField(required=False, min_value=1, max_value=65536)
    user_data = serializers.CharField(
        required=False, allow_blank=True, max_length=16384, trim_whitespace=False
    )

    def get_fields(self):
        return {**super().get_fields(), **_stop_fields()}


class InstanceStartSerializer(serializers.Serializer):
    gpus = serializers.BooleanField(
        required=False,
        default=True,
        help_text=_(
            "False: start it without GPUs (no-GPU mode, for copying data or setting up), on a "
            "CPU-only shape billed at the region's no-GPU price. Default true."
        ),
    )


class InstanceRenameSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)


class InstanceEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = InstanceEvent
        # ``detail`` (hosts, GPU ids, backend errors) is for operators; customers see the reason.
        fields = ["id", "created_at", "from_state", "to_state", "actor", "reason"]
        read_only_fields = fields


class VolumeSerializer(serializers.ModelSerializer):
    region = serializers.CharField(source="region.code")
    instance_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = Volume
        fields = [
            "id",
            "name",
            "region",
            "size_gb",
            "state",
            "instance_id",
            "delete_on_termination",
            "created_at",
        ]
        read_only_fields = fields


class VolumeCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    region = serializers.CharField(max_length=40)
    size_gb = serializers.IntegerField(min_value=1, max_value=65536)


class ClusterNodeSerializer(serializers.ModelSerializer):
    host = serializers.CharField(source="host.name", allow_null=True, default=None)

    class Meta:
        model = Instance
        fields = ["id", "name", "state", "host", "running_since"]


class ClusterSerializer(serializers.ModelSerializer):
    instance_type = serializers.CharField(source="instance_type.name")
    region = serializers.CharField(source="region.code")
    nodes = ClusterNodeSerializer(source="members", many=True, read_only=True)

    class Meta:
        model = Cluster
        fields = [
            "id",
            "name",
            "instance_type",
            "region",
            "node_count",
            "state",
            "status_message",
            "created_at",
            "running_since",
            "terminated_at",
            "nodes",
        ]


class ClusterCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63)
    instance_type = serializers.CharField(max_length=100)
    region = serializers.CharField(max_length=50)
    node_count = serializers.IntegerField(min_value=1, max_value=64)
    ssh_key_ids = serializers.ListField(child=serializers.IntegerField(), allow_empty=False)
    image = serializers.CharField(max_length=100, required=False, default="")
