from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from portal.compute.lifecycle import State, allowed_actions
from portal.compute.models import (
    DEFAULT_SSH_USER,
    Instance,
    InstanceEvent,
    Volume,
    ssh_command,
)


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
        ]
        read_only_fields = fields

    def get_ssh_user(self, instance) -> str:
        return instance.ssh_user or DEFAULT_SSH_USER

    def get_actions(self, instance) -> list[str]:
        return allowed_actions(instance.state)


_DATETIME = serializers.DateTimeField()
_ACTIONS = {state: allowed_actions(state) for state in State.values}


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
            "actions": list(_ACTIONS[row["state"]]),
            "created_at": when(row["created_at"]),
            "running_since": when(row["running_since"]),
            "terminated_at": when(row["terminated_at"]),
        }
        for row in rows
    ]


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
