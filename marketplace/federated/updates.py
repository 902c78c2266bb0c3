"""An update arrives: cheap checks (it decodes; names, shapes and values fit the round's weights) reject it at once
or leave it submitted; once a quorum of the round's participants has submitted, the round is asked to close."""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction

from marketplace.core.enqueue import enqueue
from marketplace.core.queues import TaskName
from marketplace.federated import storage
from marketplace.federated.models import RoundState, TrainRound
from marketplace.federated.start import spec_of
from marketplace.jobs.models import Assignment, AssignmentState, Result, Task, TaskState
from marketplace.jobs.verification import assignment_reject


def decode(result: Result, rnd: TrainRound) -> tuple[dict[str, Any] | None, str]:
    """The update a result carries, or None and why it is unusable."""
    from training.compress import decompress
    from training.verify import check_update, update_shapes

    weights = storage.weights(rnd)
    try:
        with result.artifact.open("rb") as handle:
            # The model's own layers bound the decoder: a layer it does not have, or of another shape, is refused
            # from its header, before its elements are allocated.
            delta = decompress(handle.read(), shapes=update_shapes(weights))
    except ValueError as exc:
        return None, f"malformed update: {exc}"
    problem = check_update(delta, weights)
    return (None, f"malformed update: {problem}") if problem else (delta, "")


def quorum(participants: int) -> int:
    return max(1, math.ceil(settings.HASHWORK["TRAIN_QUORUM"] * participants - 1e-9))


def update_received(*, task_id: UUID) -> str:
    """A node submitted its update: reject it now if it is unusable; close the round once a quorum is in. The
    update is decoded with no lock held; the verdict is applied under the round's row lock."""
    task = Task.objects.select_related("job").filter(id=task_id).first()
    if task is None or task.group is None:
        return "missing"
    rnd = TrainRound.objects.filter(job_id=task.job_id, index=task.group).first()
    if rnd is None:
        return task.state
    results = list(
        Result.objects.filter(assignment__task_id=task.id, assignment__state=AssignmentState.SUBMITTED).select_related(
            "assignment"
        )
    )
    problems: dict[UUID, str] = {}
    if rnd.state == RoundState.OPEN:
        for result in results:
            delta, problem = decode(result, rnd)
            if delta is None:
                problems[result.assignment_id] = problem
    with transaction.atomic():
        state = TrainRound.objects.select_for_update().values_list("state", flat=True).get(id=rnd.id)
        for result in results:
            assignment = result.assignment
            if state == RoundState.CLOSED:
                assignment_reject(assignment.id, assignment.node_id, f"arrived after round {rnd.index} closed")
            elif assignment.id in problems:
                assignment_reject(assignment.id, assignment.node_id, problems[assignment.id])
                # Another node may take the participant's slot while the round is open.
                Task.objects.filter(id=task.id, state=TaskState.RUNNING).update(
                    replicas_wanted=task.replicas_wanted + 1
                )
        if state == RoundState.OPEN:
            submitted = Assignment.objects.filter(
                task__job_id=task.job_id, task__group=rnd.index, state=AssignmentState.SUBMITTED
            ).count()
            if submitted >= quorum(spec_of(task.job).participants):
                round_close_request(job_id=task.job_id, index=rnd.index, why="quorum")
        return str(Task.objects.values_list("state", flat=True).get(id=task.id))


def round_close_request(*, job_id: UUID, index: int, why: str) -> None:
    enqueue(TaskName.ROUND_CLOSE, job_id, index, why)
