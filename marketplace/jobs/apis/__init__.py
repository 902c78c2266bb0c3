"""The jobs REST API: the endpoints posters call (`poster`) and those node agents call (`agent`)."""

from __future__ import annotations

from marketplace.jobs.apis.agent import (
    AssignmentFailApi,
    AssignmentInputApi,
    AssignmentOutputSerializer,
    AssignmentReleaseApi,
    AssignmentResultApi,
    AssignmentStartApi,
)
from marketplace.jobs.apis.poster import (
    JobAssetUploadApi,
    JobCancelApi,
    JobDetailApi,
    JobListApi,
    JobOutputApi,
    JobOutputSerializer,
    JobPreviewApi,
    JobResultListApi,
    JobTaskListApi,
    ResultArtifactApi,
    TaskOutputSerializer,
)

__all__ = [
    "AssignmentFailApi",
    "AssignmentInputApi",
    "AssignmentOutputSerializer",
    "AssignmentReleaseApi",
    "AssignmentResultApi",
    "AssignmentStartApi",
    "JobAssetUploadApi",
    "JobCancelApi",
    "JobDetailApi",
    "JobListApi",
    "JobOutputApi",
    "JobOutputSerializer",
    "JobPreviewApi",
    "JobResultListApi",
    "JobTaskListApi",
    "ResultArtifactApi",
    "TaskOutputSerializer",
]
