"""Catalog API: instance types with prices and live availability, regions, images, GPU models."""

from django.http import HttpResponse
from django.utils.translation import gettext as _
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.roles import Action
from portal.api.pagination import StandardPagination
from portal.api.schema import list_responses
from portal.catalog import cache as catalog_cache
from portal.catalog import selectors
from portal.catalog.api import serializers
from portal.catalog.models import GpuModel, Image, Region


@extend_schema_view(
    get=extend_schema(summary="Instance types with prices and availability per region")
)
class InstanceTypeListView(APIView):
    actions = {"GET": Action.ORG_VIEW}
    pagination_class = StandardPagination  # pages the offers below, and the schema says so

    @extend_schema(
        operation_id="instance_types_list",
        parameters=[serializers.CatalogQuerySerializer],
        responses=list_responses(serializers.InstanceTypeSerializer),
        description="Instance types with their specs, prices per region in one currency (the "
        "organisation's unless `currency` says otherwise) and `regions_with_capacity_available`. "
        "Types with no price in the currency are not offered.",
    )
    def get(self, request):
        params = serializers.CatalogQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        currency = params.validated_data.get("currency") or request.actor.organization.currency
        version = catalog_cache.catalog_version()

        def page_data():
            offers, valid_until = selectors.catalog_offers_until(currency=currency, version=version)
            offers = selectors.filter_offers(offers, params.to_query())
            paginator = self.pagination_class()
            page = paginator.paginate_queryset(offers, request, view=self)
            data = paginator.get_paginated_response(serializers.instance_type_rows(page)).data
            return data, valid_until

        # The page is the same for everyone asking this URL in this currency: it is cached
        # under the catalog version, rendered when the client takes JSON.
        renderer = request.accepted_renderer
        parts = (currency, request.build_absolute_uri(), request.accepted_media_type)
        if renderer.format != "json":
            return Response(
                catalog_cache.remember("instance-types", parts, page_data, version=version)
            )

        def rendered():
            data, valid_until = page_data()
            content = renderer.render(
                data, request.accepted_media_type, self.get_renderer_context()
            )
            return content, valid_until

        content = catalog_cache.remember("instance-types.json", parts, rendered, version=version)
        media_type = renderer.media_type
        if renderer.charset:
            media_type = f"{media_type}; charset={renderer.charset}"
        return HttpResponse(content, content_type=media_type)


class RegionFilter(filters.FilterSet):
    country = filters.CharFilter(field_name="country", lookup_expr="iexact")

    class Meta:
        model = Region
        fields = ["country"]


@extend_schema(responses=list_responses(serializers.RegionSerializer))
@extend_schema_view(get=extend_schema(summary="Regions"))
class RegionListView(generics.ListAPIView):
    actions = {"GET": Action.ORG_VIEW}
    serializer_class = serializers.RegionSerializer
    filterset_class = RegionFilter
    queryset = Region.objects.none()

    def get_queryset(self):
        return selectors.regions_list()


class ImageFilter(filters.FilterSet):
    instance_type = filters.CharFilter(
        method="supports", help_text=_("Only images that support this type.")
    )

    class Meta:
        model = Image
        fields = ["instance_type"]

    def supports(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(
            Q(instance_types__name=value) | Q(instance_types__isnull=True)
        ).distinct()


@extend_schema(responses=list_responses(serializers.ImageSerializer))
@extend_schema_view(get=extend_schema(summary="Machine images"))
class ImageListView(generics.ListAPIView):
    actions = {"GET": Action.ORG_VIEW}
    serializer_class = serializers.ImageSerializer
    filterset_class = ImageFilter
    queryset = Image.objects.none()

    def get_queryset(self):
        return selectors.images_list()


class GpuModelFilter(filters.FilterSet):
    vendor = filters.CharFilter(lookup_expr="iexact")
    min_memory_gb = filters.NumberFilter(field_name="memory_gb", lookup_expr="gte")
    mig_capable = filters.BooleanFilter()

    class Meta:
        model = GpuModel
        fields = ["vendor", "min_memory_gb", "mig_capable"]


@extend_schema(responses=list_responses(serializers.GpuModelSerializer))
@extend_schema_view(get=extend_schema(summary="GPU models and their specifications"))
class GpuModelListView(generics.ListAPIView):
    actions = {"GET": Action.ORG_VIEW}
    serializer_class = serializers.GpuModelSerializer
    filterset_class = GpuModelFilter
    queryset = GpuModel.objects.none()

    def get_queryset(self):
        return selectors.gpu_models_list().prefetch_related("mig_profiles")
