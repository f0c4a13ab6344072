from django.urls import path

from portal.compute import views

app_name = "compute"

urlpatterns = [
    path("instances/", views.instance_list, name="instances"),
    path("instances/launch/", views.instance_launch, name="instance_launch"),
    path("instances/<int:pk>/", views.instance_detail, name="instance_detail"),
    path("instances/<int:pk>/row/", views.instance_row, name="instance_row"),
    path("instances/<int:pk>/rename/", views.instance_rename, name="instance_rename"),
    path("instances/<int:pk>/terminate/", views.instance_terminate, name="instance_terminate"),
    path(
        "instances/<int:pk>/auto-stop/",
        views.instance_stop_settings,
        name="instance_stop_settings",
    ),
    path(
        "instances/<int:pk>/<str:action>/",
        views.instance_action,
        name="instance_action",
    ),
    # what machines call from inside (cloud-init), not customers
    path("machines/phone-home/<str:token>/", views.phone_home, name="phone_home"),
    path("volumes/", views.volumes, name="volumes"),
    path("volumes/<int:pk>/delete/", views.volume_delete, name="volume_delete"),
]
