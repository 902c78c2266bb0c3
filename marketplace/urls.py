"""URL map: the REST API under /api/, its schema and docs, the admin, and a health check."""

from __future__ import annotations

from django.contrib import admin
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from marketplace.federated import apis as federated_apis
from marketplace.jobs import apis as job_apis
from marketplace.nodes import apis as node_apis
from marketplace.payments import apis as payment_apis


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


api = [
    path("jobs/", job_apis.JobListApi.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>/", job_apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", job_apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/output/", job_apis.JobOutputApi.as_view(), name="job-output"),
    path("jobs/<uuid:job_id>/assets/", job_apis.JobAssetUploadApi.as_view(), name="job-assets"),
    path("jobs/<uuid:job_id>/previews/<int:position>/", job_apis.JobPreviewApi.as_view(), name="job-preview"),
    path("jobs/<uuid:job_id>/tasks/", job_apis.JobTaskListApi.as_view(), name="job-tasks"),
    path("jobs/<uuid:job_id>/results/", job_apis.JobResultListApi.as_view(), name="job-results"),
    path("jobs/<uuid:job_id>/escrow/", payment_apis.JobEscrowApi.as_view(), name="job-escrow"),
    path("jobs/<uuid:job_id>/rounds/", federated_apis.JobRoundListApi.as_view(), name="job-rounds"),
    path("files/<str:token>/", federated_apis.SignedFileApi.as_view(), name="signed-file"),
    path("results/<uuid:result_id>/artifact/", job_apis.ResultArtifactApi.as_view(), name="result-artifact"),
    path("nodes/enroll/", node_apis.NodeEnrollApi.as_view(), name="node-enroll"),
    path("nodes/heartbeat/", node_apis.NodeHeartbeatApi.as_view(), name="node-heartbeat"),
    path("nodes/me/", node_apis.NodeMeApi.as_view(), name="node-me"),
    path("nodes/me/assignments/", node_apis.NodeAssignmentListApi.as_view(), name="node-assignments"),
    path("nodes/release/", node_apis.NodeReleaseApi.as_view(), name="node-release"),
    path("nodes/me/earnings/", payment_apis.NodeEarningsApi.as_view(), name="node-earnings"),
    path("chain/", payment_apis.ChainInfoApi.as_view(), name="chain"),
    path(
        "assignments/<uuid:assignment_id>/start/",
        job_apis.AssignmentStartApi.as_view(),
        name="assignment-start",
    ),
    path(
        "assignments/<uuid:assignment_id>/result/",
        job_apis.AssignmentResultApi.as_view(),
        name="assignment-result",
    ),
    path(
        "assignments/<uuid:assignment_id>/release/", job_apis.AssignmentReleaseApi.as_view(), name="assignment-release"
    ),
    path("assignments/<uuid:assignment_id>/fail/", job_apis.AssignmentFailApi.as_view(), name="assignment-fail"),
    path(
        "assignments/<uuid:assignment_id>/inputs/<uuid:asset_id>/",
        job_apis.AssignmentInputApi.as_view(),
        name="assignment-input",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("", include("marketplace.web.urls")),
    path("admin/", admin.site.urls),
    path("healthz/", healthz, name="healthz"),
    path("api/", include(api)),
]

# A path under /api/ that matches no endpoint answers JSON in the API's error shape.
handler404 = "marketplace.api.errors.page_not_found"
