"""The spec of a train job: its dataset, model, rounds, local training, compression and aggregation; and what
replaying one participant's local steps costs the marketplace's CPU, bounded at posting."""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from marketplace.core.queues import TIME_LIMITS, Queue

DATASET_UPLOAD_SUFFIX = ".zip"

# What one training sample costs per input pixel on one CPU core of the marketplace, in nanoseconds (forward,
# backward and the optimiser step; both models are convolutional, so the cost grows with the pixels). Measured
# with torch.set_num_threads(1) on this project's CI machine (2026-12, x86-64, torch 2.13): timed steps of
# training.local.train_local and of the bare models at 16–128 px, batch 8–32 — smallcnn 340–410 ns (~0.4 ms a
# sample at 32 px), resnet18 17–27 µs up to 64 px (CIFAR stem, stride 1) and 1.3–1.7 µs above (ImageNet stem:
# stride 2 and a max-pool quarter the side), rounded up. A replay also measures the loss on LOSS_SAMPLE crops
# before and after (forward only, about a third of a training sample each).
REPLAY_NS_PER_SAMPLE_PIXEL = {"smallcnn": 500, "resnet18": 20_000}
REPLAY_NS_PER_SAMPLE_PIXEL_LARGE = {"smallcnn": 500, "resnet18": 1_600}
LARGE_IMAGE = 64
LOSS_SAMPLE = 512  # training.local.LOSS_SAMPLE, the replay's default


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

    @model_validator(mode="after")
    def _replay_budget(self, info: ValidationInfo) -> TrainSpec:
        """A posted spec must be replayable within the budgets (`replay_problems`). A stored spec (read back with
        context {"posted": True}) was checked when it was posted: a budget lowered since does not stop its job."""
        if not (info.context or {}).get("posted"):
            problems = replay_problems(self)
            if problems:
                raise ValidationError.from_exception_data(
                    "TrainSpec",
                    [
                        InitErrorDetails(
                            type=PydanticCustomError("replay_budget", message), loc=(field,), input=getattr(self, field)
                        )
                        for field, message in problems.items()
                    ],
                )
        return self


def replay_seconds(*, model: str, image_size: int, batch_size: int, local_steps: int) -> float:
    """The estimated CPU seconds (one core) the marketplace spends replaying one participant's local steps."""
    table = REPLAY_NS_PER_SAMPLE_PIXEL_LARGE if image_size > LARGE_IMAGE else REPLAY_NS_PER_SAMPLE_PIXEL
    samples = local_steps * batch_size + 2 * LOSS_SAMPLE / 3
    return table[model] * 1e-9 * image_size * image_size * samples


def replay_budget_seconds() -> float:
    """The most CPU one replay may cost (TRAIN_REPLAY_BUDGET_SECONDS, default 60 s on one core)."""
    return float(getattr(settings, "TRAIN_REPLAY_BUDGET_SECONDS", 60))


def round_replay_budget_seconds() -> float:
    """The most CPU one round's replays may cost together (TRAIN_ROUND_REPLAY_BUDGET_SECONDS, default half the
    replay queue's soft time limit: decoding, the loss checks and the evaluation need the rest)."""
    default = TIME_LIMITS[Queue.REPLAY]["soft_time_limit"] / 2
    return float(getattr(settings, "TRAIN_ROUND_REPLAY_BUDGET_SECONDS", default))


def replay_problems(spec: TrainSpec) -> dict[str, str]:
    """What makes this spec's replays too costly, by field: one participant's local steps over the per-replay
    budget (spec.local_steps, and spec.batch_size when even one step is), or a round's replays together (every
    update of a new node is replayed) over the round's budget (spec.participants). Empty when it fits."""
    one = replay_seconds(
        model=spec.model, image_size=spec.image_size, batch_size=spec.batch_size, local_steps=spec.local_steps
    )
    budget, round_budget = replay_budget_seconds(), round_replay_budget_seconds()
    what = f"{spec.model} at {spec.image_size} px, batch {spec.batch_size}"
    if one > budget:
        step = replay_seconds(model=spec.model, image_size=spec.image_size, batch_size=spec.batch_size, local_steps=1)
        fixed = replay_seconds(model=spec.model, image_size=spec.image_size, batch_size=spec.batch_size, local_steps=0)
        most = max(0, math.floor((budget - fixed) / (step - fixed)))
        message = (
            f"a replay of {_count(spec.local_steps, 'step')} of {what} would take about {duration(one)} of "
            f"marketplace CPU; at most {duration(budget)} (≈ {_count(most, 'step')}) is allowed"
        )
        problems = {"local_steps": message}
        if most < 1:
            problems["batch_size"] = f"even one step of {what} is over the replay budget: lower the batch or the size"
        return problems
    if spec.participants * one > round_budget:
        most = max(1, math.floor(round_budget / one))
        return {
            "participants": (
                f"a round's replays ({spec.participants} participants × about {duration(one)}) would take about "
                f"{duration(spec.participants * one)} of marketplace CPU; at most {duration(round_budget)} "
                f"(≈ {most} participants at this cost) is allowed"
            )
        }
    return {}


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float) -> str:
    """A human length of time: 45 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 36_000 else f"{seconds / 3600:.0f} h"


def stored(spec: dict[str, Any]) -> TrainSpec:
    """A posted job's spec, read back (its replay cost was checked at posting)."""
    return TrainSpec.model_validate(spec, context={"posted": True})
