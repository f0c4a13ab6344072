from django.urls import path

from portal.compute.api import views

urlpatterns = [
    path("instances", views.InstanceListView.as_view(), name="api-instances"),
    path("instances/<int:pk>", views.InstanceDetailView.as_view(), name="api-instance"),
    path(
        "instances/<int:pk>/events",
        views.InstanceEventListView.as_view(),
        name="api-instance-events",
    ),
    path(
        "instances/<int:pk>/auto-stop",
        views.InstanceStopSettingsView.as_view(),
        name="api-instance-auto-stop",
    ),
    *(
        path(f"instances/<int:pk>/{name}", view, name=f"api-instance-{name}")
        for name, view in views.INSTANCE_ACTION_VIEWS.items()
    ),
    path("clusters", views.ClusterListView.as_view(), name="api-clusters"),
    path("clusters/<int:pk>", views.ClusterDetailView.as_view(), name="api-cluster"),
    path(
        "clusters/<int:pk>/terminate",
        views.ClusterTerminateView.as_view(),
        name="api-cluster-terminate",
    ),
    path("volumes", views.VolumeListView.as_view(), name="api-volumes"),
    path("volumes/<int:pk>", views.VolumeDetailView.as_view(), name="api-volume"),
]
