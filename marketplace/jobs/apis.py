"""Thin API views for jobs (posters) and assignments (node agents); the logic lives in services/selectors."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.fields import TokenAmountField
from marketplace.api.pagination import Pagination
from marketplace.jobs import kinds, selectors, services
from marketplace.jobs.models import Assignment, Job, JobState, Result, Task
from marketplace.nodes.authentication import NodeApiView


class ErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    message = serializers.CharField()
    extra = serializers.DictField()


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; extra.fields names each bad field."),
    401: OpenApiResponse(ErrorSerializer, description="Missing or wrong credentials."),
    404: OpenApiResponse(ErrorSerializer, description="No such object for this caller."),
    409: OpenApiResponse(ErrorSerializer, description="The object's state does not allow this."),
}


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: ERRORS[code] for code in codes}


class JobOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    price_per_replica = TokenAmountField()
    quote = TokenAmountField()
    tasks = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField(
        help_text="Share of the job done, 0 to 1 (running tasks count in part)."
    )
    output_url = serializers.SerializerMethodField()
    preview_urls = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "state",
            "state_reason",
            "spec",
            "price_per_replica",
            "replication",
            "task_count",
            "quote",
            "deadline",
            "created_at",
            "funded_at",
            "finished_at",
            "tasks",
            "progress",
            "output_url",
            "preview_urls",
        ]

    def get_tasks(self, job: Job) -> dict[str, int]:
        return selectors.job_task_counts(job=job)

    def get_progress(self, job: Job) -> float:
        return selectors.job_progress(job=job)

    def get_output_url(self, job: Job) -> str | None:
        return f"/api/jobs/{job.id}/output/" if hasattr(job, "output") else None

    def get_preview_urls(self, job: Job) -> list[str]:
        if not hasattr(job, "output"):
            return []
        return [f"/api/jobs/{job.id}/previews/{k}/" for k in range(len(job.output.summary.get("previews", [])))]


class JobCreateInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    kind = serializers.ChoiceField(choices=kinds.names())
    spec = serializers.JSONField(help_text="The kind's job spec; see the kind's schema.")
    price_per_replica = TokenAmountField(help_text="Token base units paid per accepted task replica.")
    replication = serializers.IntegerField(default=2, min_value=1, max_value=services.MAX_REPLICATION)
    deadline = serializers.DateTimeField(required=False, help_text="Defaults to a week from now.")


class JobListApi(APIView):
    @extend_schema(
        operation_id="jobs_list",
        parameters=[
            OpenApiParameter("state", str, enum=[s.value for s in JobState]),
            OpenApiParameter("kind", str, enum=kinds.names()),
        ],
        responses={200: JobOutputSerializer(many=True), **_errors(401)},
    )
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(
            poster_id=request.user.pk,
            state=request.query_params.get("state"),
            kind=request.query_params.get("kind"),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="jobs_create",
        request=JobCreateInputSerializer,
        responses={201: JobOutputSerializer, **_errors(400, 401)},
        description="Post a job. It is created as a draft with its quote (price × tasks × replication).",
    )
    def post(self, request: Request) -> Response:
        data = JobCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.job_create(poster=request.user, **data.validated_data)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(operation_id="jobs_retrieve", responses={200: JobOutputSerializer, **_errors(401, 404)})
    def get(self, request: Request, job_id: UUID) -> Response:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        return Response(JobOutputSerializer(job).data)


class JobOutputApi(APIView):
    @extend_schema(
        operation_id="jobs_output_retrieve",
        responses={
            (200, "application/zip"): OpenApiResponse(description="The job's dataset (COCO, merged)."),
            **_errors(401, 404, 409),
        },
        description="Download what a completed job produced (a render job's merged COCO dataset).",
    )
    def get(self, request: Request, job_id: UUID) -> FileResponse:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        output = selectors.job_output(job=job)
        return FileResponse(
            output.file.open("rb"),
            as_attachment=True,
            filename=f"{job.kind}-{job.id}.zip",
            content_type="application/zip",
        )


class JobPreviewApi(APIView):
    @extend_schema(
        operation_id="jobs_previews_retrieve",
        responses={
            (200, "image/png"): OpenApiResponse(description="A labeled preview image."),
            **_errors(401, 404, 409),
        },
        description="Preview K (0-based) of a completed render job: an image with its masks, boxes and categories.",
    )
    def get(self, request: Request, job_id: UUID, position: int) -> FileResponse:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        name = selectors.job_preview(job=job, position=position)
        return FileResponse(default_storage.open(name, "rb"), content_type="image/png")


class JobCancelApi(APIView):
    @extend_schema(
        operation_id="jobs_cancel",
        request=None,
        responses={200: JobOutputSerializer, **_errors(401, 404, 409)},
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = services.job_cancel(job_id=job_id, poster=request.user)
        return Response(JobOutputSerializer(job).data)


class ProgressOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    done = serializers.IntegerField()
    total = serializers.IntegerField()


class TaskOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    replicas = serializers.IntegerField(read_only=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "id",
            "index",
            "state",
            "state_reason",
            "payload",
            "requirements",
            "replicas",
            "progress",
            "created_at",
        ]

    @extend_schema_field(ProgressOutputSerializer(allow_null=True))
    def get_progress(self, task: Task) -> dict[str, int] | None:
        """The furthest running replica's progress as its node reports it; null when none reports any."""
        done, total = getattr(task, "progress_done", None), getattr(task, "progress_total", None)
        return None if done is None or total is None else {"done": done, "total": total}


class JobTaskListApi(APIView):
    @extend_schema(
        operation_id="jobs_tasks_list", responses={200: TaskOutputSerializer(many=True), **_errors(401, 404)}
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.task_list(job=job), request, view=self)
        return paginator.get_paginated_response(TaskOutputSerializer(page, many=True).data)


class ResultOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    task_index = serializers.IntegerField(source="assignment.task.index")
    node = serializers.UUIDField(source="assignment.node_id")
    state = serializers.CharField(source="assignment.state")
    artifact_url = serializers.SerializerMethodField()

    class Meta:
        model = Result
        fields = [
            "id",
            "assignment",
            "task_index",
            "node",
            "state",
            "sha256",
            "size",
            "metrics",
            "created_at",
            "artifact_url",
        ]

    def get_artifact_url(self, result: Result) -> str:
        return f"/api/results/{result.id}/artifact/"


class JobResultListApi(APIView):
    @extend_schema(
        operation_id="jobs_results_list",
        responses={200: ResultOutputSerializer(many=True), **_errors(401, 404)},
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.result_list(job=job), request, view=self)
        return paginator.get_paginated_response(ResultOutputSerializer(page, many=True).data)


class ResultArtifactApi(APIView):
    @extend_schema(
        operation_id="results_artifact_retrieve",
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="The artifact's bytes."),
            **_errors(401, 404),
        },
    )
    def get(self, request: Request, result_id: UUID) -> FileResponse:
        result = selectors.result_get(result_id=result_id, poster_id=request.user.pk)
        return FileResponse(
            result.artifact.open("rb"),
            as_attachment=True,
            filename=f"{result.assignment_id}.bin",
            content_type="application/octet-stream",
        )


class AssignmentOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = [
            "id",
            "task",
            "state",
            "attempt",
            "start_by",
            "lease_expires_at",
            "started_at",
            "submitted_at",
            "progress",
        ]

    @extend_schema_field(ProgressOutputSerializer(allow_null=True))
    def get_progress(self, assignment: Assignment) -> dict[str, int] | None:
        return assignment.progress


class AssignmentStartApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_start",
        request=None,
        responses={200: AssignmentOutputSerializer, **_errors(401, 404, 409)},
        description="The node starts a leased assignment. 409 if it was cancelled, expired or already started.",
    )
    def post(self, request: Request, assignment_id: UUID) -> Response:
        assignment = services.assignment_start(assignment_id=assignment_id, node=request.auth)
        return Response(AssignmentOutputSerializer(assignment).data)


class ResultSubmitInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    artifact = serializers.FileField(allow_empty_file=True)
    sha256 = serializers.CharField(max_length=64, help_text="Hex sha256 of the artifact's bytes.")
    signature = serializers.CharField(max_length=132, help_text="EIP-191 signature of (assignment id, sha256).")
    metrics = serializers.JSONField(binary=True, required=False, default=dict)

    def validate_metrics(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class ResultOutputNodeSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Result
        fields = ["id", "assignment", "sha256", "size", "created_at"]


class AssignmentResultApi(NodeApiView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="assignments_result_create",
        request={"multipart/form-data": ResultSubmitInputSerializer},
        responses={201: ResultOutputNodeSerializer, **_errors(400, 401, 404, 409)},
    )
    def post(self, request: Request, assignment_id: UUID) -> Response:
        # Ownership before validation: another node learns nothing, not even which fields are wrong.
        selectors.assignment_get_for_node(assignment_id=assignment_id, node=request.auth)
        data = ResultSubmitInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.result_submit(assignment_id=assignment_id, node=request.auth, **data.validated_data)
        return Response(ResultOutputNodeSerializer(result).data, status=status.HTTP_201_CREATED)


class AssignmentReleaseApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_release",
        request=None,
        responses={200: AssignmentOutputSerializer, **_errors(401, 404, 409)},
        description="Hand one open assignment back (the node is pausing); it is re-leased at once, no penalty.",
    )
    def post(self, request: Request, assignment_id: UUID) -> Response:
        assignment = services.assignment_release(assignment_id=assignment_id, node=request.auth)
        return Response(AssignmentOutputSerializer(assignment).data)


class AssignmentFailInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    reason = serializers.CharField(max_length=2000, help_text="What went wrong (the runner's last error lines).")


class AssignmentFailApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_fail",
        request=AssignmentFailInputSerializer,
        responses={200: AssignmentOutputSerializer, **_errors(400, 401, 404, 409)},
        description="The node's runner failed: the attempt is lost and the replica is leased to another node.",
    )
    def post(self, request: Request, assignment_id: UUID) -> Response:
        selectors.assignment_get_for_node(assignment_id=assignment_id, node=request.auth)
        data = AssignmentFailInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        assignment = services.assignment_fail(
            assignment_id=assignment_id, node=request.auth, reason=data.validated_data["reason"]
        )
        return Response(AssignmentOutputSerializer(assignment).data)


class JobAssetUploadInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    path = serializers.CharField(max_length=255, help_text="The path the spec uses, e.g. models/widget.glb.")
    file = serializers.FileField()


class JobAssetOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    path = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


class JobAssetUploadApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="jobs_assets_create",
        request={"multipart/form-data": JobAssetUploadInputSerializer},
        responses={201: JobAssetOutputSerializer, **_errors(400, 401, 404, 409)},
        description="Upload a file the job's spec refers to (a render job's glTF model) while the job is a draft. "
        "A job that needs assets starts only once they are all uploaded.",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        data = JobAssetUploadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        asset = services.job_asset_upload(job_id=job_id, poster=request.user, **data.validated_data)
        return Response(JobAssetOutputSerializer(asset).data, status=status.HTTP_201_CREATED)


class AssignmentInputApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_inputs_retrieve",
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="The input file's bytes."),
            **_errors(401, 404, 409),
        },
        description="An input file of an open assignment (a render job's glTF asset), for its node only.",
    )
    def get(self, request: Request, assignment_id: UUID, asset_id: UUID) -> FileResponse:
        asset = selectors.assignment_input(assignment_id=assignment_id, asset_id=asset_id, node=request.auth)
        return FileResponse(asset.file.open("rb"), content_type="application/octet-stream")
