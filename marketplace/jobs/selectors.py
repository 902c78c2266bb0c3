"""Reads for jobs: every poster-facing query is scoped to the poster."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Count, Max, Q, QuerySet

from marketplace.core.exceptions import Conflict, NotFound
from marketplace.jobs.models import (
    ASSIGNMENT_OPEN,
    Assignment,
    AssignmentState,
    Job,
    JobAsset,
    JobOutput,
    JobState,
    Result,
    Task,
    TaskState,
)
from marketplace.nodes.models import Node


def job_list(*, poster_id: int, state: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(poster_id=poster_id)
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    return jobs


def job_get(*, job_id: UUID, poster_id: int) -> Job:
    # Another poster's job is "not found": existence is not leaked.
    job = Job.objects.filter(id=job_id, poster_id=poster_id).first()
    if job is None:
        raise NotFound("No such job.")
    return job


def job_task_counts(*, job: Job) -> dict[str, int]:
    rows = job.tasks.values("state").annotate(n=Count("id")).order_by()
    return {row["state"]: row["n"] for row in rows}


def task_list(*, job: Job) -> QuerySet[Task]:
    """The job's tasks with their replica count and the furthest running replica's progress (done, total)."""
    running = Q(assignments__state=AssignmentState.RUNNING)
    return job.tasks.annotate(
        replicas=Count("assignments"),
        progress_done=Max("assignments__progress_done", filter=running),
        progress_total=Max("assignments__progress_total", filter=running),
    ).order_by("index")


def job_progress(*, job: Job) -> float:
    """The share of the job done, 0 to 1: completed tasks count whole, running ones by their furthest replica's
    reported progress."""
    if job.task_count == 0:
        return 0.0
    done = float(job.tasks.filter(state=TaskState.COMPLETED).count())
    for task in task_list(job=job).filter(state=TaskState.RUNNING, progress_total__gt=0):
        done += min(1.0, task.progress_done / task.progress_total)  # type: ignore[attr-defined]
    return round(min(1.0, done / job.task_count), 4)


def result_list(*, job: Job) -> QuerySet[Result]:
    return (
        Result.objects.filter(assignment__task__job=job)
        .select_related("assignment__task")
        .order_by("assignment__task__index", "created_at")
    )


def result_get(*, result_id: UUID, poster_id: int) -> Result:
    """A result the poster may download: only accepted (verified) replicas are the poster's. An unverified or
    rejected one is "not found", so a poster cannot take work, then cancel before it is paid."""
    result = (
        Result.objects.select_related("assignment__task__job")
        .filter(id=result_id, assignment__task__job__poster_id=poster_id, assignment__state=AssignmentState.ACCEPTED)
        .first()
    )
    if result is None:
        raise NotFound("No such verified result: results are served once their replica is accepted.")
    return result


def assignment_get_for_node(*, assignment_id: UUID, node: Node) -> Assignment:
    # Another node's assignment is "not found": existence is not leaked.
    assignment = Assignment.objects.select_related("task__job").filter(id=assignment_id, node=node).first()
    if assignment is None:
        raise NotFound("No such assignment for this node.")
    return assignment


def job_output(*, job: Job) -> JobOutput:
    output = JobOutput.objects.filter(job=job).first()
    if output is not None:
        return output
    if job.state == JobState.COMPLETED:
        raise Conflict("The job is complete and its output is being assembled: try again in a moment.")
    raise Conflict(f"The job is {job.state}; it has an output once it has completed.", {"state": job.state})


def assignment_input(*, assignment_id: UUID, asset_id: UUID, node: Node) -> JobAsset:
    assignment = assignment_get_for_node(assignment_id=assignment_id, node=node)
    if assignment.state not in ASSIGNMENT_OPEN:
        raise Conflict(f"This assignment is {assignment.state}; its inputs are served only while it is open.")
    asset = JobAsset.objects.filter(id=asset_id, job_id=assignment.task.job_id).first()
    if asset is None:
        raise NotFound("No such input for this assignment.")
    return asset


def job_preview(*, job: Job, position: int) -> str:
    names = job_output(job=job).summary.get("previews", [])
    if not 0 <= position < len(names):
        raise NotFound(f"No preview {position}; this job has {len(names)}.")
    return str(names[position])
