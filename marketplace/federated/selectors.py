"""Reads of train jobs: their rounds."""

from __future__ import annotations

from marketplace.core.exceptions import Conflict
from marketplace.federated.models import TrainRound
from marketplace.jobs.models import Job


def rounds_of(*, job: Job) -> list[TrainRound]:
    if job.kind != "train":
        raise Conflict(f"This is a {job.kind} job; only train jobs have rounds.")
    return list(TrainRound.objects.filter(job=job).order_by("index"))
