"""Instances and volumes API. Views parse input, call one service or selector, render."""

import django_filters
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.roles import Action
from portal.api.schema import error_responses, list_responses
from portal.compute import selectors, services
from portal.compute.api import serializers
from portal.compute.errors import ComputeErrorCode
from portal.compute.lifecycle import Action as InstanceAction
from portal.compute.lifecycle import State
from portal.compute.models import Cluster, Instance, InstanceEvent, Volume
from portal.compute.services.clusters import cluster_launch, cluster_terminate
from portal.errors import InvalidInput


class InstanceFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(field_name="state", choices=State.choices)
    region = django_filters.CharFilter(field_name="region__code")
    instance_type = django_filters.CharFilter(field_name="instance_type__name")
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Instance
        fields = ["status", "region", "instance_type", "name"]


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    location=OpenApiParameter.HEADER,
    required=False,
    description="The same key and body return the same instance; the same key with another body is refused (409).",
)


class _Rows:
    """What the paginator pages: counts ``instances``, slices ``rows`` (their values)."""

    def __init__(self, instances, rows) -> None:
        self.instances, self.rows = instances, rows

    def count(self) -> int:
        return self.instances.count()

    def __getitem__(self, index):
        return self.rows[index]


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.InstanceSerializer)))
@extend_schema_view(
    get=extend_schema(summary="The organisation's instances"),
    post=extend_schema(summary="Launch an instance"),
)
class InstanceListView(generics.ListAPIView):
    actions = {"GET": Action.INSTANCE_VIEW, "POST": Action.INSTANCE_MANAGE}
    serializer_class = serializers.InstanceSerializer
    filterset_class = InstanceFilter
    queryset = Instance.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.instances_list(self.request.actor.organization)

    def list(self, request, *args, **kwargs):
        """The page of ``InstanceSerializer`` rows, read as plain values: unfiltered, the page
        and the count in one statement (``selectors.ApiRows``); filtered, in one query, counted
        without the joins that only name the type, region and image."""
        if any(name in request.query_params for name in InstanceFilter.base_filters):
            instances = self.filter_queryset(self.get_queryset())
            rows = _Rows(instances, selectors.instance_list_values(instances))
        else:
            rows = selectors.ApiRows(
                request.actor.organization, self.paginator.expected_slice(request)
            )
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(serializers.instance_list_rows(page))

    @extend_schema(
        request=serializers.InstanceCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: serializers.InstanceSerializer,
            200: serializers.InstanceSerializer,
            **error_responses(400, 401, 402, 403, 409, 415),
        },
        description="Launch an instance. 402 `insufficient_credit`, `spend_limit_reached` or "
        "`invoice_overdue` when the organisation cannot pay for it. 409 `capacity_unavailable` names the regions where the type "
        "is available and similar types available in this region; 409 `quota_exceeded` gives the limit "
        "and the current use.",
    )
    def post(self, request):
        payload = serializers.InstanceCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "").strip() or None
        if key is not None and len(key) > 255:
            raise InvalidInput(
                _("Idempotency-Key is at most 255 characters."), code=ComputeErrorCode.INVALID
            )
        data = payload.validated_data
        launch = services.LaunchRequest(
            name=data["name"],
            instance_type=data["instance_type"],
            region=data["region"],
            image=data.get("image", ""),
            ssh_key_ids=tuple(data["ssh_key_ids"]),
            volume_ids=tuple(data.get("volume_ids", ())),
            new_volume_gb=data.get("new_volume_gb"),
            user_data=data.get("user_data", ""),
            **{name: data[name] for name in serializers.STOP_FIELDS if name in data},
        )
        instance, created = services.instance_launch(
            actor=request.actor, request=launch, idempotency_key=key
        )
        instance = selectors.instance_get(request.actor.organization, instance.pk)
        return Response(
            serializers.InstanceSerializer(instance).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


@extend_schema_view(
    get=extend_schema(summary="One instance"), patch=extend_schema(summary="Rename an instance")
)
class InstanceDetailView(APIView):
    actions = {"GET": Action.INSTANCE_VIEW, "PATCH": Action.INSTANCE_MANAGE}

    @extend_schema(
        responses={200: serializers.InstanceSerializer, **error_responses(401, 403, 404)}
    )
    def get(self, request, pk: int):
        return Response(
            serializers.InstanceSerializer(
                selectors.instance_get(request.actor.organization, pk)
            ).data
        )

    @extend_schema(
        request=serializers.InstanceRenameSerializer,
        responses={
            200: serializers.InstanceSerializer,
            **error_responses(400, 401, 403, 404, 409, 415),
        },
    )
    def patch(self, request, pk: int):
        payload = serializers.InstanceRenameSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.instance_rename(
            actor=request.actor, instance_id=pk, name=payload.validated_data["name"]
        )
        return Response(
            serializers.InstanceSerializer(
                selectors.instance_get(request.actor.organization, pk)
            ).data
        )


@extend_schema_view(patch=extend_schema(summary="Set when an instance stops by itself"))
class InstanceStopSettingsView(APIView):
    actions = {"PATCH": Action.INSTANCE_MANAGE}

    @extend_schema(
        operation_id="instances_auto_stop",
        request=serializers.InstanceStopSettingsSerializer,
        responses={
            200: serializers.InstanceSerializer,
            **error_responses(400, 401, 403, 404, 409, 415),
        },
        description="Change the fields given: idle stop on or off, its threshold and minutes, "
        "and the scheduled stop time (null clears it). 400 `invalid` with a message per field; "
        "409 `invalid_transition` for a terminated or failed instance.",
    )
    def patch(self, request, pk: int):
        payload = serializers.InstanceStopSettingsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.instance_stop_settings_set(
            actor=request.actor, instance_id=pk, **payload.validated_data
        )
        return Response(
            serializers.InstanceSerializer(
                selectors.instance_get(request.actor.organization, pk)
            ).data
        )


class InstanceActionView(APIView):
    actions = {"POST": Action.INSTANCE_MANAGE}
    action_name = ""

    def post(self, request, pk: int):
        gpus = True
        if self.action_name == InstanceAction.START:  # a start may be without GPUs
            payload = serializers.InstanceStartSerializer(data=request.data)
            payload.is_valid(raise_exception=True)
            gpus = payload.validated_data["gpus"]
        services.instance_action(
            actor=request.actor, instance_id=pk, action=self.action_name, gpus=gpus
        )
        instance = selectors.instance_get(request.actor.organization, pk)
        return Response(
            serializers.InstanceSerializer(instance).data, status=status.HTTP_202_ACCEPTED
        )


ACTION_SUMMARIES = {
    "reboot": "Reboot an instance",
    "start": "Start a stopped instance",
    "stop": "Stop an instance (its disk is kept)",
    "terminate": "Terminate an instance",
}


def action_view(name: str):
    def post(self, request, pk: int):
        return InstanceActionView.post(self, request, pk)

    view = type(f"Instance{name.title()}View", (InstanceActionView,), {"action_name": name})
    view.post = extend_schema(
        operation_id=f"instances_{name}",
        summary=ACTION_SUMMARIES[name],
        request=serializers.InstanceStartSerializer if name == "start" else None,
        responses={
            202: serializers.InstanceSerializer,
            **error_responses(
                *((400, 401, 402, 403, 404, 409, 415) if name == "start" else (401, 403, 404, 409))
            ),
        },
        description=f"{name.title()} the instance. 409 `invalid_transition` when its state does not allow it"
        + (
            "; 409 `capacity_unavailable` leaves it stopped; 402 `insufficient_credit` or "
            '`invoice_overdue` when the organisation cannot pay. With `{"gpus": false}` it '
            "starts without GPUs (no-GPU mode: a CPU-only shape billed at the region's no-GPU "
            "price, no GPU quota used); 409 `no_gpu_mode_unavailable` where no no-GPU price is "
            "set for its region and the organisation's currency."
            if name == "start"
            else "."
        ),
    )(post)
    return view.as_view()


INSTANCE_ACTION_VIEWS = {action.value: action_view(action.value) for action in InstanceAction}


@extend_schema(responses=list_responses(serializers.InstanceEventSerializer))
@extend_schema_view(get=extend_schema(summary="An instance's state changes"))
class InstanceEventListView(generics.ListAPIView):
    actions = {"GET": Action.INSTANCE_VIEW}
    serializer_class = serializers.InstanceEventSerializer
    queryset = InstanceEvent.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        instance = selectors.instance_get(self.request.actor.organization, self.kwargs["pk"])
        return selectors.instance_events(instance)


@extend_schema_view(get=extend_schema(responses=list_responses(serializers.VolumeSerializer)))
@extend_schema_view(
    get=extend_schema(summary="The organisation's volumes"),
    post=extend_schema(summary="Create a volume"),
)
class VolumeListView(generics.ListAPIView):
    actions = {"GET": Action.INSTANCE_VIEW, "POST": Action.INSTANCE_MANAGE}
    serializer_class = serializers.VolumeSerializer
    queryset = Volume.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.volumes_list(self.request.actor.organization)

    @extend_schema(
        request=serializers.VolumeCreateSerializer,
        responses={201: serializers.VolumeSerializer, **error_responses(400, 401, 403, 409, 415)},
    )
    def post(self, request):
        payload = serializers.VolumeCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        volume = services.volume_create(actor=request.actor, **payload.validated_data)
        return Response(serializers.VolumeSerializer(volume).data, status=status.HTTP_201_CREATED)


@extend_schema_view(delete=extend_schema(summary="Delete a volume"))
class VolumeDetailView(APIView):
    actions = {"DELETE": Action.INSTANCE_MANAGE}

    @extend_schema(responses={204: None, **error_responses(401, 403, 404, 409)})
    def delete(self, request, pk: int):
        services.volume_delete(actor=request.actor, volume_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    get=extend_schema(
        summary="The organisation's clusters",
        responses=list_responses(serializers.ClusterSerializer),
    ),
    post=extend_schema(summary="Launch a cluster of N nodes x 8 GPUs, all or nothing"),
)
class ClusterListView(generics.ListAPIView):
    actions = {"GET": Action.INSTANCE_VIEW, "POST": Action.INSTANCE_MANAGE}
    serializer_class = serializers.ClusterSerializer
    queryset = Cluster.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.clusters_list(self.request.actor.organization)

    @extend_schema(
        request=serializers.ClusterCreateSerializer,
        responses={201: serializers.ClusterSerializer, **error_responses(400, 401, 403, 409, 415)},
    )
    def post(self, request):
        payload = serializers.ClusterCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        cluster = cluster_launch(
            actor=request.actor, **{**data, "ssh_key_ids": tuple(data["ssh_key_ids"])}
        )
        cluster = selectors.clusters_list(request.actor.organization).get(pk=cluster.pk)
        return Response(serializers.ClusterSerializer(cluster).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(
        summary="A cluster with its nodes",
        responses={200: serializers.ClusterSerializer, **error_responses(401, 403, 404)},
    )
)
class ClusterDetailView(generics.RetrieveAPIView):
    actions = {"GET": Action.INSTANCE_VIEW}
    serializer_class = serializers.ClusterSerializer
    queryset = Cluster.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return selectors.clusters_list(self.request.actor.organization)


@extend_schema_view(post=extend_schema(summary="Terminate a cluster and all its nodes"))
class ClusterTerminateView(APIView):
    actions = {"POST": Action.INSTANCE_MANAGE}

    @extend_schema(
        request=None,
        responses={202: serializers.ClusterSerializer, **error_responses(401, 403, 404)},
    )
    def post(self, request, pk: int):
        cluster_terminate(actor=request.actor, cluster_id=pk)
        cluster = selectors.clusters_list(request.actor.organization).get(pk=pk)
        return Response(
            serializers.ClusterSerializer(cluster).data, status=status.HTTP_202_ACCEPTED
        )
