from django.urls import path

from portal.metering import views

app_name = "metering"

urlpatterns = [
    path("usage/", views.usage, name="usage"),
    path("usage/export.csv", views.usage_export, name="usage_export"),
]
