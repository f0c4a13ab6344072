from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal.observability import health, metrics

handler400 = "portal.error_views.bad_request"
handler403 = "portal.error_views.permission_denied"
handler404 = "portal.error_views.page_not_found"
handler500 = "portal.error_views.server_error"

admin.site.site_header = _("GPU Cloud operations")
admin.site.site_title = _("GPU Cloud admin")
admin.site.index_title = _("Hosts, capacity, prices, organisations and billing")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves its start-up script from ?script, so the page needs no inline script.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(
            url_name="api-schema", template_name="api/swagger_ui.html"
        ),
        name="api-docs",
    ),
    path("api/v1/", include("portal.accounts.api.urls")),
    path("api/v1/", include("portal.catalog.api.urls")),
    path("api/v1/", include("portal.compute.api.urls")),
    path("api/v1/", include("portal.metering.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("", include("portal.catalog.urls")),
    path("", include("portal.compute.urls")),
    path("", include("portal.metering.urls")),
    path("", include("billing.urls")),
    path("", include("portal.accounts.urls")),
]
