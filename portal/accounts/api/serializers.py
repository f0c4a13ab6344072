from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from portal.accounts.models import AuditEvent, Membership, Organization, SshKey


class OrganizationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "billing_email",
            "country",
            "tax_id",
            "currency",
            "billing_mode",
            "created_at",
        ]
        read_only_fields = fields


class MemberSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    joined_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Membership
        fields = ["id", "email", "full_name", "role", "joined_at"]
        read_only_fields = fields


class SshKeySerializer(serializers.ModelSerializer):
    created_by = serializers.EmailField(source="created_by.email", default=None, allow_null=True)

    class Meta:
        model = SshKey
        fields = [
            "id",
            "name",
            "key_type",
            "bits",
            "fingerprint",
            "public_key",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class SshKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=80,
        required=False,
        allow_blank=True,
        help_text=_("Defaults to the key's comment."),
    )
    public_key = serializers.CharField(
        max_length=16384,
        help_text=_("One OpenSSH public key line: ed25519, ecdsa or rsa >= 2048 bits."),
    )


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "target_type",
            "target_id",
            "target_label",
            "ip_address",
            "details",
        ]
        read_only_fields = fields
