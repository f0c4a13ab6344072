from django.urls import path

from portal.metering.api import views

urlpatterns = [
    path("usage-events", views.UsageEventIngestView.as_view(), name="api-usage-events"),
    path("usage", views.UsageView.as_view(), name="api-usage"),
]
