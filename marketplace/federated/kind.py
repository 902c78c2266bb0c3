"""The `train` kind: a PyTorch model trained on a dataset across volunteer nodes in federated rounds. Each round
leases one task per participant on different nodes; each node trains from the round's global weights on its
shard and uploads a compressed update; the marketplace verifies the updates, aggregates the accepted ones and
opens the next round (start.py, updates.py, rounds.py). The runner is nodeagent.runners.train."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from marketplace.core.exceptions import ValidationFailed
from marketplace.federated import start, updates
from marketplace.federated.spec import DATASET_UPLOAD_SUFFIX, TrainSpec
from marketplace.jobs.kinds import DrivenKind, TaskPlan
from marketplace.jobs.models import Assignment, Job, JobOutput, JobState, Task


class TrainKind(DrivenKind):
    name = "train"
    description = (
        "A PyTorch model trained in federated rounds on volunteer nodes; updates are verified by "
        "replay, norm and held-out loss checks, and aggregated robustly."
    )
    spec_model = TrainSpec
    artifact_max_bytes = 256 * 2**20
    start_window_seconds = 60
    lease_seconds = 600
    time_limit_seconds = 3600
    # Verified by replay and robust aggregation, not by replicas: exactly one per participant slot.
    max_replication = 1
    asset_max_bytes = 1024 * 2**20
    asset_suffixes = (DATASET_UPLOAD_SUFFIX,)

    def task_count(self, spec: TrainSpec) -> int:
        # The quote covers every round; rounds not run (the target reached early) are refunded.
        return spec.rounds * spec.participants

    def check(self, spec: TrainSpec, poster: Any) -> None:
        """The dataset must be the poster's own completed render job, with its dataset assembled."""
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

    def required_assets(self, spec: dict[str, Any]) -> list[str]:
        upload = (spec.get("dataset") or {}).get("upload")
        return [str(upload)] if upload else []

    def start(self, job: Job) -> list[TaskPlan]:
        return start.train_start(job=job)

    def verify(self, task_id: UUID) -> str:
        return updates.update_received(task_id=task_id)

    def inputs(self, assignment: Assignment, task: Task) -> list[dict[str, Any]]:
        return start.assignment_inputs(assignment=assignment, task=task)
