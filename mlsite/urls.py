from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from predictions import health, monitoring
from predictions.api import errors

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("predictions.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    re_path(r"^api/", errors.api_not_found, name="api-not-found"),  # last under api/: a JSON 404 in every mode
    path("api-auth/", include("rest_framework.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", monitoring.metrics, name="metrics"),
]

handler400 = "predictions.api.errors.bad_request"
handler403 = "predictions.api.errors.permission_denied"
handler404 = "predictions.api.errors.page_not_found"
handler500 = "predictions.api.errors.server_error"
