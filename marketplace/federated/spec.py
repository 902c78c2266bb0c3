"""The spec of a train job: its dataset, model, rounds, local training, compression and aggregation."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
