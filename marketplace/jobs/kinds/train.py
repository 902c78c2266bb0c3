"""The `train` kind: a PyTorch model trained on a dataset across volunteer nodes in federated rounds. Each round
leases one task per participant on different nodes; each node trains from the round's global weights on its
shard and uploads a compressed update; the marketplace verifies the updates, aggregates the accepted ones and
opens the next round. The rounds live in marketplace.federated; the runner is nodeagent.runners.train."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from marketplace.core.exceptions import ValidationFailed
from marketplace.jobs.kinds import Kind, TaskPlan, register

DATASET_UPLOAD_SUFFIX = ".zip"


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: uuid.UUID | None = Field(None, description="A completed render job of yours: its merged dataset.")
    upload: str | None = Field(
        None, description="The path of a COCO dataset zip you upload to the job (POST /api/jobs/{id}/assets/)."
    )

    @model_validator(mode="after")
    def _one(self) -> DatasetRef:
        if (self.job is None) == (self.upload is None):
            raise ValueError("give exactly one of dataset.job (a render job's id) or dataset.upload (a zip's path)")
        if self.upload is not None and not self.upload.endswith(DATASET_UPLOAD_SUFFIX):
            raise ValueError(f"dataset.upload must name a {DATASET_UPLOAD_SUFFIX} file")
        return self


class CompressionRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "fp16", "int8", "topk", "powersgd"] = "int8"
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    rank: Annotated[int, Field(ge=1, le=64)] = 4


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetRef
    model: Literal["smallcnn", "resnet18"] = "smallcnn"
    image_size: Annotated[int, Field(ge=16, le=128, description="Side of the square product crops.")] = 32
    rounds: Annotated[int, Field(ge=1, le=200, description="Most rounds; fewer if the target is reached.")] = 5
    participants: Annotated[int, Field(ge=1, le=32, description="Nodes per round, one task each.")] = 2
    local_steps: Annotated[int, Field(ge=1, le=10_000)] = 20
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.05
    compression: CompressionRef = CompressionRef()
    aggregation: Literal["fedavg", "median", "trimmed_mean"] = "fedavg"
    target_accuracy: Annotated[float | None, Field(ge=0, le=1)] = None
    round_deadline_seconds: Annotated[int, Field(ge=5, le=86_400)] = 300
    validation_fraction: Annotated[float, Field(ge=0.05, le=0.5)] = 0.2
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


def task_count(spec: TrainSpec) -> int:
    # The quote covers every round; rounds not run (the target reached early) are refunded.
    return spec.rounds * spec.participants


def check(spec: TrainSpec, poster: Any) -> None:
    """The dataset must be the poster's own completed render job, with its dataset assembled."""
    from marketplace.jobs.models import Job, JobOutput, JobState

    if spec.dataset.job is None:
        return
    source = Job.objects.filter(id=spec.dataset.job, poster=poster).first()
    problem = None
    if source is None:
        problem = "No render job of yours has this id."
    elif source.kind != "render":
        problem = f"Job {source.id} is a {source.kind} job, not a render job."
    elif source.state != JobState.COMPLETED:
        problem = f"Render job {source.id} is {source.state}; train on it once it has completed."
    elif not JobOutput.objects.filter(job=source).exists():
        problem = f"Render job {source.id} is complete but its dataset is still being merged: try again shortly."
    if problem:
        raise ValidationFailed({"spec.dataset.job": [problem]})


def required_assets(spec: dict[str, Any]) -> list[str]:
    upload = (spec.get("dataset") or {}).get("upload")
    return [str(upload)] if upload else []


def start(job: Any) -> list[TaskPlan]:
    from marketplace.federated import services

    return services.train_start(job=job)


def verify(task_id: Any) -> str:
    from marketplace.federated import services

    return services.update_received(task_id=task_id)


def inputs(assignment: Any, task: Any) -> list[dict[str, Any]]:
    from marketplace.federated import services

    return services.assignment_inputs(assignment=assignment, task=task)


def _split(spec: TrainSpec) -> list[TaskPlan]:
    raise AssertionError("train jobs are split round by round by start(); split() is never called")


def _result_value(result: Any) -> Any:
    raise AssertionError("train updates are verified by marketplace.federated, not by replica agreement")


KIND = register(
    Kind(
        name="train",
        spec_model=TrainSpec,
        task_count=task_count,
        split=_split,
        result_value=_result_value,
        artifact_max_bytes=256 * 2**20,
        start_window_seconds=60,
        lease_seconds=600,
        time_limit_seconds=3600,
        description="A PyTorch model trained in federated rounds on volunteer nodes; updates are verified by "
        "replay, norm and held-out loss checks, and aggregated robustly.",
        max_replication=1,
        check=check,
        start=start,
        verify=verify,
        self_completing=True,
        inputs=inputs,
        required_assets=required_assets,
        asset_max_bytes=1024 * 2**20,
        asset_suffixes=(DATASET_UPLOAD_SUFFIX,),
    )
)
