"""The work sweep (beat, every 15 s): nothing is queued only once. A message can be lost (a publish that failed
after its commit, a broker restart) and a task can die (its worker killed, its time limit hit); the sweep finds
work that is due and not done and queues it again. The services it queues are idempotent, so a duplicate run
(the first message was only late) does nothing twice:

- verification: a replicated task with a replica submitted more than SWEEP_GRACE_SECONDS ago that no verify has
  judged, when a verdict is possible (no replica still open and none more wanted, or the task has stopped);
- splitting: a job funded more than SWEEP_GRACE_SECONDS ago that has no tasks;
- completing: a running replicated job whose every task is completed (done here: it is one conditional UPDATE);
- merging: a completed job whose kind builds an output (render) and has none yet.

Each item is queued again at most once per SWEEP_REQUEUE_SECONDS, never while a delivery of it runs, and not
while it is poisoned (core.deliveries). Training rounds that are due are found by federated.rounds.rounds_due."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from marketplace.core import deliveries
from marketplace.core.enqueue import Arg, enqueue
from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import once_per
from marketplace.jobs import dispatch, kinds
from marketplace.jobs.kinds import ReplicatedKind
from marketplace.jobs.models import (
    ASSIGNMENT_OPEN,
    Assignment,
    AssignmentState,
    Job,
    JobOutput,
    JobState,
    TaskState,
)
from marketplace.jobs.services.jobs import job_complete_if_done, job_stranded_settle
from marketplace.jobs.transitions import job_transition

logger = logging.getLogger(__name__)

# The most items of each sort one sweep looks at (the next sweep takes the rest).
SWEEP_BATCH = 500


def _grace() -> timedelta:
    """How long work may wait for its first message before the sweep queues it again."""
    return timedelta(seconds=getattr(settings, "SWEEP_GRACE_SECONDS", 60))


def _requeue_seconds() -> int:
    return int(getattr(settings, "SWEEP_REQUEUE_SECONDS", 300))


def _requeue(name: TaskName, *args: Arg) -> bool:
    """Queue task `name` for this item again, unless a delivery of it runs, it is poisoned, or it was queued by a
    sweep in the last SWEEP_REQUEUE_SECONDS."""
    ids = [str(a) for a in args]
    if deliveries.running(name, *ids) or deliveries.poisoned(name, *ids):
        return False
    if not once_per(f"sweep:{name.value}:{':'.join(ids)}", _requeue_seconds()):
        return False
    logger.warning("work sweep: %s%s was due and not done; queued again", name.value, tuple(ids))
    enqueue(name, *args)
    return True


def _kind_names(*, replicated: bool = False, merged: bool = False) -> list[str]:
    names = []
    for name in kinds.names():
        kind = kinds.get(name)
        if replicated and not isinstance(kind, ReplicatedKind):
            continue
        if merged and kind.on_complete is None:
            continue
        names.append(name)
    return names


def verifies_due(*, now: datetime) -> list[UUID]:
    """Replicated tasks with a submitted replica, older than the grace period, on which a verdict is possible."""
    rows = (
        Assignment.objects.filter(
            state=AssignmentState.SUBMITTED,
            submitted_at__lt=now - _grace(),
            task__job__kind__in=_kind_names(replicated=True),
        )
        .values_list("task_id", "task__state", "task__live_replicas", "task__replicas_wanted")
        .distinct()
        .order_by("task_id")[:SWEEP_BATCH]
    )
    candidates = {task_id: (state, live >= wanted) for task_id, state, live, wanted in rows}
    waiting = set(
        Assignment.objects.filter(task_id__in=candidates, state__in=ASSIGNMENT_OPEN).values_list("task_id", flat=True)
    )
    # A running task still waiting for a replica (open, or wanted and not leased yet) is not due: its verdict
    # comes when that replica is submitted. A stopped or completed task's submitted replicas are due at once.
    return [
        task_id
        for task_id, (state, full) in candidates.items()
        if state != TaskState.RUNNING or (full and task_id not in waiting)
    ]


def splits_due(*, now: datetime) -> list[UUID]:
    """Jobs funded longer than the grace period ago that have no tasks."""
    due = Job.objects.filter(state=JobState.FUNDED, funded_at__lt=now - _grace(), tasks__isnull=True)
    return list(due.values_list("id", flat=True).order_by("funded_at")[:SWEEP_BATCH])


def completions_due() -> list[UUID]:
    """Running replicated jobs whose every task is completed (their completion runs after a verdict's commit)."""
    due = (
        Job.objects.filter(state=JobState.RUNNING, kind__in=_kind_names(replicated=True))
        .annotate(tasks_total=Count("tasks"), tasks_open=Count("tasks", filter=~Q(tasks__state=TaskState.COMPLETED)))
        .filter(tasks_total__gt=0, tasks_open=0)
    )
    return list(due.values_list("id", flat=True)[:SWEEP_BATCH])


def merges_due(*, now: datetime) -> list[tuple[UUID, str]]:
    """Completed jobs, finished longer than the grace period ago, whose kind builds an output they do not have."""
    have = JobOutput.objects.values("job_id")
    due = Job.objects.filter(
        state=JobState.COMPLETED, kind__in=_kind_names(merged=True), finished_at__lt=now - _grace()
    ).exclude(id__in=have)
    return list(due.values_list("id", "kind").order_by("finished_at")[:SWEEP_BATCH])


def work_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Queue again the verifications, splits and merges that are due and not done, and complete the jobs whose
    every task is done; returns how many of each."""
    now = now or timezone.now()
    done = {"verify": 0, "split": 0, "complete": 0, "merge": 0}
    for task_id in verifies_due(now=now):
        done["verify"] += _requeue(TaskName.TASK_VERIFY, task_id)
    for job_id in splits_due(now=now):
        done["split"] += _requeue(TaskName.JOB_SPLIT, job_id)
    for job_id in completions_due():
        if job_complete_if_done(job_id=job_id):
            logger.warning("work sweep: job %s had every task done but was still running; completed", job_id)
            done["complete"] += 1
    for job_id, kind_name in merges_due(now=now):
        on_complete = kinds.get(kind_name).on_complete
        if on_complete is not None:
            done["merge"] += _requeue(on_complete, job_id)
    return done


def job_abandon(*, job_id: UUID, reason: str) -> bool:
    """A job whose own work cannot be done by the marketplace (its split or a round's close killed its worker
    again and again) fails with `reason`: its open work stops, what was submitted gets its verdict (paid if it
    verifies), and its escrow's remainder goes back to the poster. False if it had stopped already."""
    with transaction.atomic():
        if not job_transition(job_id=job_id, to=JobState.FAILED, reason=reason, strict=False):
            return False
        dispatch.work_stop(job_id=job_id, reason="job failed")
        job_stranded_settle(job_id=job_id)
    logger.error("job %s failed: %s", job_id, reason)
    return True
