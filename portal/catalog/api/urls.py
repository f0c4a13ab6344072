from django.urls import path

from portal.catalog.api import views

urlpatterns = [
    path("instance-types", views.InstanceTypeListView.as_view(), name="api-instance-types"),
    path("regions", views.RegionListView.as_view(), name="api-regions"),
    path("images", views.ImageListView.as_view(), name="api-images"),
    path("gpu-models", views.GpuModelListView.as_view(), name="api-gpu-models"),
]
