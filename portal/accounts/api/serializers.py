from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from portal.accounts.models import (
    AuditEvent,
    ElectronicAddressScheme,
    Membership,
    Organization,
    SshKey,
    VerificationKind,
    VerificationStatus,
)


class OrganizationSerializer(serializers.ModelSerializer):
    # blank until an e-invoice address is given (the schema says so: "" or a scheme)
    electronic_address_scheme = serializers.ChoiceField(
        choices=ElectronicAddressScheme.choices, allow_blank=True, read_only=True
    )

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "billing_email",
            "country",
            "tax_id",
            "street",
            "address_line2",
            "postcode",
            "city",
            "buyer_reference",
            "electronic_address",
            "electronic_address_scheme",
            "einvoice_profile",
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


class VerificationSerializer(serializers.Serializer):
    """The organisation's verification: its state and masked numbers, never the numbers."""

    state = serializers.ChoiceField(
        choices=["unverified", *VerificationStatus.values],
        help_text=_("unverified, submitted (pending review), approved, rejected or revoked."),
    )
    kind = serializers.ChoiceField(choices=VerificationKind.choices, allow_null=True)
    verified_as = serializers.ChoiceField(
        choices=VerificationKind.choices,
        allow_null=True,
        help_text=_("What the organisation is verified as now (null: not verified)."),
    )
    name = serializers.CharField(allow_null=True)
    id_number_masked = serializers.CharField(
        allow_null=True,
        help_text=_("The identity number (the individual's or the authorised person's), masked."),
    )
    credit_code = serializers.CharField(allow_null=True)
    authorized_person_name = serializers.CharField(allow_null=True)
    has_business_licence = serializers.BooleanField()
    has_authorization_letter = serializers.BooleanField()
    rejection_reason = serializers.CharField(
        allow_null=True, help_text=_("Why it was rejected or revoked (null otherwise).")
    )
    submitted_at = serializers.DateTimeField(allow_null=True)
    reviewed_at = serializers.DateTimeField(allow_null=True)

    @staticmethod
    def of(organization, verification) -> dict:
        v = verification
        return {
            "state": v.status if v else "unverified",
            "kind": v.kind if v else None,
            "verified_as": organization.verified_as or None,
            "name": v.name if v else None,
            "id_number_masked": v.id_number_masked if v else None,
            "credit_code": (v.credit_code or None) if v else None,
            "authorized_person_name": (v.authorized_person_name or None) if v else None,
            "has_business_licence": bool(v and v.business_licence),
            "has_authorization_letter": bool(v and v.authorization_letter),
            "rejection_reason": (v.reason or None) if v else None,
            "submitted_at": v.submitted_at if v else None,
            "reviewed_at": v.reviewed_at if v else None,
        }


class VerificationSubmitSerializer(serializers.Serializer):
    """An individual needs ``name`` and ``id_number``; an enterprise ``name`` (registered),
    ``credit_code``, ``authorized_person_name``, ``id_number`` (the authorised person's) and a
    ``business_licence`` file (multipart), optionally an ``authorization_letter``."""

    kind = serializers.ChoiceField(choices=VerificationKind.choices)
    name = serializers.CharField(max_length=200, allow_blank=True, default="")
    id_number = serializers.CharField(max_length=24, allow_blank=True, default="")
    credit_code = serializers.CharField(max_length=24, allow_blank=True, default="")
    authorized_person_name = serializers.CharField(max_length=120, allow_blank=True, default="")
    business_licence = serializers.FileField(required=False, allow_null=True, default=None)
    authorization_letter = serializers.FileField(required=False, allow_null=True, default=None)
