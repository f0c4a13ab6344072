"""Accounts API. Views parse input, call one service or selector, and render the result."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts import selectors, services, verification
from portal.accounts.api import serializers
from portal.accounts.filters import AuditEventFilter
from portal.accounts.models import AuditEvent, Membership, SshKey
from portal.accounts.roles import Action
from portal.api.schema import error_responses, list_responses


@extend_schema_view(get=extend_schema(summary="The organisation of the API key"))
class OrganizationView(APIView):
    actions = {"GET": Action.ORG_VIEW}

    @extend_schema(
        operation_id="organization_retrieve",
        responses={200: serializers.OrganizationSerializer, **error_responses(401, 403)},
    )
    def get(self, request):
        return Response(serializers.OrganizationSerializer(request.actor.organization).data)


@extend_schema(responses=list_responses(serializers.MemberSerializer))
@extend_schema_view(get=extend_schema(summary="The organisation's members and their roles"))
class MemberListView(generics.ListAPIView):
    actions = {"GET": Action.MEMBER_VIEW}
    serializer_class = serializers.MemberSerializer
    queryset = Membership.objects.none()  # for the schema; get_queryset scopes to the org

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.members_list(self.request.actor.organization)


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.SshKeySerializer)))
@extend_schema_view(
    get=extend_schema(summary="The organisation's SSH keys"),
    post=extend_schema(summary="Add an SSH public key"),
)
class SshKeyListView(generics.ListAPIView):
    actions = {"GET": Action.SSH_KEY_VIEW, "POST": Action.SSH_KEY_MANAGE}
    serializer_class = serializers.SshKeySerializer
    queryset = SshKey.objects.none()  # for the schema; get_queryset scopes to the org

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.ssh_keys_list(self.request.actor.organization)

    @extend_schema(
        request=serializers.SshKeyCreateSerializer,
        responses={201: serializers.SshKeySerializer, **error_responses(400, 401, 403, 409, 415)},
    )
    def post(self, request):
        payload = serializers.SshKeyCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        ssh_key = services.ssh_key_create(actor=request.actor, **payload.validated_data)
        return Response(serializers.SshKeySerializer(ssh_key).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(summary="One SSH key"), delete=extend_schema(summary="Delete an SSH key")
)
class SshKeyDetailView(APIView):
    actions = {"GET": Action.SSH_KEY_VIEW, "DELETE": Action.SSH_KEY_MANAGE}

    @extend_schema(responses={200: serializers.SshKeySerializer, **error_responses(401, 403, 404)})
    def get(self, request, pk: int):
        ssh_key = selectors.ssh_key_get(request.actor.organization, pk)
        return Response(serializers.SshKeySerializer(ssh_key).data)

    @extend_schema(responses={204: None, **error_responses(401, 403, 404)})
    def delete(self, request, pk: int):
        services.ssh_key_delete(actor=request.actor, ssh_key_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(responses=list_responses(serializers.AuditEventSerializer))
@extend_schema_view(get=extend_schema(summary="The organisation's audit log"))
class AuditEventListView(generics.ListAPIView):
    actions = {"GET": Action.AUDIT_VIEW}
    serializer_class = serializers.AuditEventSerializer
    filterset_class = AuditEventFilter
    queryset = AuditEvent.objects.none()  # for the schema; get_queryset scopes to the org

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.audit_events_list(self.request.actor.organization)


@extend_schema_view(
    get=extend_schema(summary="The organisation's real-name or enterprise verification"),
    post=extend_schema(summary="Submit the organisation's verification for review"),
)
class VerificationView(APIView):
    """State, kind and masked numbers only: identity numbers never leave the portal."""

    actions = {"GET": Action.ORG_VIEW, "POST": Action.ORG_VERIFY}

    @extend_schema(
        operation_id="verification_retrieve",
        responses={200: serializers.VerificationSerializer, **error_responses(401, 403)},
    )
    def get(self, request):
        organization = request.actor.organization
        current = verification.verification_current(organization)
        return Response(serializers.VerificationSerializer.of(organization, current))

    @extend_schema(
        operation_id="verification_submit",
        request={
            "multipart/form-data": serializers.VerificationSubmitSerializer,
            "application/json": serializers.VerificationSubmitSerializer,
        },
        responses={
            201: serializers.VerificationSerializer,
            **error_responses(400, 401, 403, 409, 415),
        },
    )
    def post(self, request):
        payload = serializers.VerificationSubmitSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        created = verification.verification_submit(
            actor=request.actor, submission=verification.Submission(**payload.validated_data)
        )
        organization = created.organization
        organization.refresh_from_db(fields=["verified_as"])
        return Response(
            serializers.VerificationSerializer.of(organization, created),
            status=status.HTTP_201_CREATED,
        )
