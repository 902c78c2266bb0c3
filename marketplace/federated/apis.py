"""Train rounds for posters, and the signed input files node agents download."""

from __future__ import annotations

from uuid import UUID

from django.http import FileResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.errors import error_responses as _errors
from marketplace.federated import selectors as rounds_selectors
from marketplace.federated import storage
from marketplace.federated.models import TrainRound
from marketplace.jobs import selectors


class TrainRoundOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = TrainRound
        fields = ["index", "state", "opened_at", "deadline", "closed_at", "close_reason", "weights_sha256", "metrics"]


class JobRoundListApi(APIView):
    @extend_schema(
        operation_id="jobs_rounds_list",
        responses={200: TrainRoundOutputSerializer(many=True), **_errors(401, 404, 409)},
        description="A train job's rounds: accuracy and loss on the held-out split after each, updates accepted and "
        "rejected (with reasons), bytes up and down per node, wall time.",
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = selectors.job_get(job_id=job_id, poster_id=request.user.pk)
        rounds = rounds_selectors.rounds_of(job=job)
        data = job.train_data if hasattr(job, "train_data") else None
        return Response(
            {
                "classes": data.classes if data else [],
                "untrained": data.baseline if data else None,
                "results": TrainRoundOutputSerializer(rounds, many=True).data,
            }
        )


class SignedFileApi(APIView):
    # The URL itself is the credential (signed, tied to one open assignment): agents fetch without a token.
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="files_retrieve",
        responses={(200, "application/octet-stream"): OpenApiResponse(description="The file."), **_errors(404)},
        description="An input file of an open assignment (a train round's weights or shard), by signed URL.",
    )
    def get(self, request: Request, token: str) -> FileResponse:
        return FileResponse(storage.file_open(token=token), content_type="application/octet-stream")
