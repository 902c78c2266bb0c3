"""Thin API views node agents call on their assignments: start, submit the result, release, fail, fetch inputs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace.api.errors import error_responses
from marketplace.api.parsers import CappedFormParser
from marketplace.core.uploads import UploadCap, UploadCapMixin
from marketplace.jobs import kinds, selectors, services
from marketplace.jobs.apis.poster import ProgressOutputSerializer
from marketplace.jobs.models import Assignment, Result
from marketplace.nodes.authentication import NodeApiView
from protocol.base import ProtocolError
from protocol.metrics import metrics_check


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
        responses={200: AssignmentOutputSerializer, **error_responses(401, 404, 409)},
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
        """A flat object of short names and finite numbers or short strings (protocol.metrics)."""
        try:
            return metrics_check(value)
        except ProtocolError as exc:
            raise serializers.ValidationError(str(exc)) from None


class ResultOutputNodeSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Result
        fields = ["id", "assignment", "sha256", "size", "created_at"]


class AssignmentResultApi(UploadCapMixin, NodeApiView):
    parser_classes = [MultiPartParser, CappedFormParser]
    assignment: Assignment | None = None

    def upload_cap(self, request: Request, **kwargs: Any) -> UploadCap:
        """The artifact streams under its kind's cap (HASHWORK_ARTIFACT_LIMITS, else the kind's own, the rule
        result_submit checks too); another node's assignment is a 404 before a byte of the body is read."""
        assignment = selectors.assignment_get_for_node(assignment_id=kwargs["assignment_id"], node=request.auth)
        self.assignment = assignment  # read once per upload: post() and result_submit use it
        kind = assignment.task.job.kind
        limit = settings.HASHWORK["ARTIFACT_LIMITS"].get(kind) or kinds.get(kind).artifact_max_bytes
        return UploadCap(limit, f"A {kind} result")

    @extend_schema(
        operation_id="assignments_result_create",
        request={"multipart/form-data": ResultSubmitInputSerializer},
        responses={201: ResultOutputNodeSerializer, **error_responses(400, 401, 404, 409, 413)},
        description="Upload the artifact of a running assignment (or of a leased one within its start window, which "
        "starts it too) with its sha256 and signature. The artifact streams "
        "under its kind's size cap: past it the upload is refused with a 413 naming the cap, and nothing is kept.",
    )
    def post(self, request: Request, assignment_id: UUID) -> Response:
        # Ownership before validation (upload_cap read it): another node learns nothing, not even which fields are
        # wrong.
        assignment = self.assignment or selectors.assignment_get_for_node(
            assignment_id=assignment_id, node=request.auth
        )
        data = ResultSubmitInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.result_submit(
            assignment_id=assignment_id, node=request.auth, assignment=assignment, **data.validated_data
        )
        return Response(ResultOutputNodeSerializer(result).data, status=status.HTTP_201_CREATED)


class AssignmentReleaseApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_release",
        request=None,
        responses={200: AssignmentOutputSerializer, **error_responses(401, 404, 409)},
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
        responses={200: AssignmentOutputSerializer, **error_responses(400, 401, 404, 409)},
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


class AssignmentInputApi(NodeApiView):
    @extend_schema(
        operation_id="assignments_inputs_retrieve",
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="The input file's bytes."),
            **error_responses(401, 404, 409),
        },
        description="An input file of an open assignment (a render job's glTF asset), for its node only.",
    )
    def get(self, request: Request, assignment_id: UUID, asset_id: UUID) -> FileResponse:
        asset = selectors.assignment_input(assignment_id=assignment_id, asset_id=asset_id, node=request.auth)
        return FileResponse(asset.file.open("rb"), content_type="application/octet-stream")
