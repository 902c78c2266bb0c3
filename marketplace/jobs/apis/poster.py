"""Thin API views posters call: post, list, follow and cancel jobs, upload their assets, fetch what they produced."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import error_responses
from marketplace.api.fields import TokenAmountField
from marketplace.api.pagination import Pagination, paginated
from marketplace.api.parsers import CappedFormParser
from marketplace.core.uploads import UploadCap, UploadCapMixin
from marketplace.jobs import kinds, selectors, services
from marketplace.jobs.models import AssignmentState, Job, JobState, Result, Task


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


class JobListFilterSerializer(serializers.Serializer):  # type: ignore[type-arg]
    state = serializers.ChoiceField(choices=[s.value for s in JobState], required=False)
    kind = serializers.ChoiceField(choices=kinds.names(), required=False)


class JobListApi(APIView):
    @extend_schema(
        operation_id="jobs_list",
        parameters=[
            OpenApiParameter("state", str, enum=[s.value for s in JobState]),
            OpenApiParameter("kind", str, enum=kinds.names()),
        ],
        responses={200: paginated(JobOutputSerializer, "Job"), **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        filters = JobListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)  # an unknown state or kind is a 400 naming it, not an empty page
        jobs = selectors.job_list(
            poster_id=request.user.pk,
            state=filters.validated_data.get("state"),
            kind=filters.validated_data.get("kind"),
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="jobs_create",
        request=JobCreateInputSerializer,
        responses={201: JobOutputSerializer, **error_responses(400, 401)},
        description="Post a job. It is created as a draft with its quote (price × tasks × replication).",
    )
    def post(self, request: Request) -> Response:
        data = JobCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.job_create(poster=request.user, **data.validated_data)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(operation_id="jobs_retrieve", responses={200: JobOutputSerializer, **error_responses(401, 404)})
    def get(self, request: Request, job_id: UUID) -> Response:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        return Response(JobOutputSerializer(job).data)


class JobOutputApi(APIView):
    @extend_schema(
        operation_id="jobs_output_retrieve",
        responses={
            (200, "application/zip"): OpenApiResponse(description="The job's dataset (COCO, merged)."),
            **error_responses(401, 404, 409),
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
            **error_responses(401, 404, 409),
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
        responses={200: JobOutputSerializer, **error_responses(401, 404, 409)},
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
        operation_id="jobs_tasks_list",
        responses={200: paginated(TaskOutputSerializer, "Task"), **error_responses(401, 404)},
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

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_artifact_url(self, result: Result) -> str | None:
        # Only verified work is the poster's: an unverified or rejected replica's bytes are not served.
        if result.assignment.state != AssignmentState.ACCEPTED:
            return None
        return f"/api/results/{result.id}/artifact/"


class JobResultListApi(APIView):
    @extend_schema(
        operation_id="jobs_results_list",
        responses={200: paginated(ResultOutputSerializer, "Result"), **error_responses(401, 404)},
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
            **error_responses(401, 404),
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


class JobAssetUploadInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    path = serializers.CharField(max_length=255, help_text="The path the spec uses, e.g. models/widget.glb.")
    file = serializers.FileField()


class JobAssetOutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    path = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


class JobAssetUploadApi(UploadCapMixin, APIView):
    parser_classes = [MultiPartParser, CappedFormParser]

    def upload_cap(self, request: Request, **kwargs: Any) -> UploadCap:
        """The file streams under the job's kind's asset cap. The caller is the request's user as Django knows
        it: session authentication reads the body (its CSRF check) before DRF has set request.user. Another
        poster's job is a 404 before a byte of the body is read."""
        job = selectors.job_get(job_id=kwargs["job_id"], poster_id=request._request.user.pk)
        return UploadCap(kinds.get(job.kind).asset_max_bytes, f"A {job.kind} job's asset")

    @extend_schema(
        operation_id="jobs_assets_create",
        request={"multipart/form-data": JobAssetUploadInputSerializer},
        responses={201: JobAssetOutputSerializer, **error_responses(400, 401, 404, 409, 413)},
        description="Upload a file the job's spec refers to (a render job's glTF model) while the job is a draft. "
        "A job that needs assets starts only once they are all uploaded. The file streams under the kind's asset "
        "cap: past it the upload is refused with a 413 naming the cap, and nothing is kept.",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        data = JobAssetUploadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        asset = services.job_asset_upload(job_id=job_id, poster=request.user, **data.validated_data)
        return Response(JobAssetOutputSerializer(asset).data, status=status.HTTP_201_CREATED)
