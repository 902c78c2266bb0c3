"""Writes for jobs: post, fund, split, cancel, expire, complete."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from marketplace.core.enqueue import enqueue, schedule_request
from marketplace.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from marketplace.core.fields import UINT256_MAX
from marketplace.core.queues import TaskName
from marketplace.jobs import dispatch, kinds
from marketplace.jobs.kinds import DrivenKind, ReplicatedKind
from marketplace.jobs.models import (
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    Assignment,
    AssignmentState,
    Job,
    JobState,
    Task,
    TaskState,
)
from marketplace.jobs.transitions import job_transition

logger = logging.getLogger(__name__)

MAX_REPLICATION = 7


def quote_compute(*, price_per_replica: int, task_count: int, replication: int) -> int:
    """What a job costs before fees: price × tasks × replication, in integer base units."""
    return price_per_replica * task_count * replication


def job_create(
    *,
    poster: AbstractBaseUser,
    kind: str,
    spec: Any,
    price_per_replica: int,
    replication: int,
    deadline: datetime | None = None,
) -> Job:
    """Validate a job posting and create it as a draft with its quote. Invalid input writes nothing."""
    job_kind = kinds.get(kind)
    parsed = kinds.parse_spec(job_kind, spec)
    fields: dict[str, list[str]] = {}
    if isinstance(price_per_replica, bool) or not isinstance(price_per_replica, int) or price_per_replica < 1:
        fields["price_per_replica"] = ["Must be a positive whole number of token base units."]
    most = min(MAX_REPLICATION, job_kind.max_replication)
    if isinstance(replication, bool) or not isinstance(replication, int) or not 1 <= replication <= most:
        fields["replication"] = [
            f"Must be between 1 and {most}."
            if most > 1
            else f"Must be 1: {job_kind.name} jobs are verified without replicas."
        ]
    now = timezone.now()
    hours = settings.HASHWORK
    if deadline is None:
        deadline = now + timedelta(hours=hours["JOB_DEFAULT_DEADLINE_HOURS"])
    elif deadline <= now:
        fields["deadline"] = ["Must be in the future."]
    elif deadline > now + timedelta(hours=hours["JOB_MAX_DEADLINE_HOURS"]):
        fields["deadline"] = [f"Must be within {hours['JOB_MAX_DEADLINE_HOURS'] // 24} days."]
    if fields:
        raise ValidationFailed(fields)
    job_kind.check(parsed, poster)
    task_count = job_kind.task_count(parsed)
    quote = quote_compute(price_per_replica=price_per_replica, task_count=task_count, replication=replication)
    if quote > UINT256_MAX:
        raise ValidationFailed({"price_per_replica": ["price × tasks × replication must fit in 256 bits."]})
    job = Job.objects.create(
        poster=poster,
        kind=job_kind.name,
        spec=parsed.model_dump(mode="json"),
        price_per_replica=price_per_replica,
        replication=replication,
        task_count=task_count,
        quote=quote,
        deadline=deadline,
    )
    logger.info("job %s created by %s: %s, %d tasks, quote %d", job.id, poster.pk, kind, task_count, quote)
    return job


def job_missing_assets(*, job: Job) -> list[str]:
    """The files the job's spec needs that its poster has not uploaded yet."""
    kind = kinds.get(job.kind)
    have = set(job.assets.values_list("path", flat=True))
    return [path for path in kind.required_assets(job.spec) if path not in have]


def job_mark_funded(*, job_id: UUID, reason: str) -> None:
    """A draft job's funding is in place (seen on chain, or the dev service): fund it and split it into tasks.
    A job still missing uploaded assets stays a draft, with the reason, until they are there."""
    job = Job.objects.get(id=job_id)
    missing = job_missing_assets(job=job)
    if missing:
        # Outside any transaction: the reason must stay even though the funding is refused.
        Job.objects.filter(id=job_id, state=JobState.DRAFT).update(
            state_reason=f"waiting for assets: {', '.join(missing)}"
        )
        raise Conflict(f"The job needs its assets uploaded first: {', '.join(missing)}.", {"missing": missing})
    with transaction.atomic():
        job_transition(job_id=job_id, to=JobState.FUNDED, reason=reason)
        enqueue(TaskName.JOB_SPLIT, job_id)


def job_fund_dev(*, job_id: UUID, actor: AbstractBaseUser) -> None:
    """Mark a job funded without a chain (dev installs and staff only), then split it into tasks."""
    if not (settings.HASHWORK["DEV_FUNDING"] or getattr(actor, "is_staff", False)):
        raise PermissionDenied("Dev funding is off here (HASHWORK_DEV_FUNDING=false); fund the job on chain.")
    job_mark_funded(job_id=job_id, reason="funded by dev service")


def job_split(*, job_id: UUID) -> int:
    """Create a funded job's tasks and start it. Idempotent: a job already split is left alone. The plans are
    made with no lock held (a train job's start makes crops, shards and a baseline evaluation); the tasks are then
    written in one short transaction that re-checks the job."""
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        logger.warning("job %s vanished before it was split", job_id)
        return 0
    if job.state != JobState.FUNDED or job.tasks.exists():
        logger.info("job %s not split: state %s", job_id, job.state)
        return 0
    kind = kinds.get(job.kind)
    if isinstance(kind, DrivenKind):
        try:
            plans = kind.start(job)
        except ValueError as exc:
            # The job cannot run as posted (its dataset is unreadable, say): it fails, and its funds go back.
            job_transition(job_id=job.id, to=JobState.FAILED, reason=f"could not start: {exc}", strict=False)
            return 0
    elif isinstance(kind, ReplicatedKind):
        plans = kind.split(kinds.parse_spec(kind, job.spec))
    else:
        raise TypeError(f"the {kind.name} kind is neither replicated nor driven")
    with transaction.atomic():
        if not Job.objects.select_for_update().filter(id=job_id, state=JobState.FUNDED).exists():
            return 0
        if Task.objects.filter(job_id=job_id).exists():
            return 0  # a concurrent split won
        Task.objects.bulk_create(
            Task(
                job=job,
                index=i,
                payload=plan.payload,
                requirements=plan.requirements,
                replicas_wanted=job.replication,
                group=plan.group,
            )
            for i, plan in enumerate(plans)
        )
        job_transition(job_id=job.id, to=JobState.RUNNING, reason=f"split into {len(plans)} tasks")
        schedule_request()
    return len(plans)


@transaction.atomic
def job_cancel(*, job_id: UUID, poster: AbstractBaseUser) -> Job:
    """Cancel the poster's job: pending work is revoked; accepted work stays paid."""
    job = Job.objects.select_for_update().filter(id=job_id, poster=poster).first()
    if job is None:
        raise NotFound("No such job.")
    job_transition(job_id=job.id, to=JobState.CANCELLED, reason="cancelled by the poster")
    dispatch.work_stop(job_id=job.id, reason="job cancelled")
    # Work already submitted is still judged: what verifies is paid (the poster never takes it for free).
    job_stranded_settle(job_id=job.id)
    job.refresh_from_db()
    return job


def jobs_expire(*, now: datetime | None = None) -> int:
    """Expire every unfinished job past its deadline; returns how many."""
    now = now or timezone.now()
    expired = 0
    due = Job.objects.filter(deadline__lt=now, state__in=JOB_TRANSITIONS[JobState.EXPIRED]).values_list("id", flat=True)
    for job_id in list(due):
        with transaction.atomic():
            if job_transition(job_id=job_id, to=JobState.EXPIRED, reason="deadline passed", strict=False):
                dispatch.work_stop(job_id=job_id, reason="job expired")
                job_stranded_settle(job_id=job_id)
                expired += 1
    return expired


def job_stranded_settle(*, job_id: UUID) -> int:
    """Give the submitted replicas of a stopped job (cancelled, failed, expired) their verdict, so that its
    escrow can close: a replicated kind's are judged again with what is there (paid if they verify, see
    verification); a driven kind's updates belong to a round that will never close: cancelled, unpaid, with no
    mark against their nodes. Returns how many were waiting."""
    job = Job.objects.filter(id=job_id, state__in=JOB_TERMINAL).values("kind").first()
    if job is None:
        return 0
    waiting = list(
        Assignment.objects.filter(task__job_id=job_id, state=AssignmentState.SUBMITTED).values_list("id", "task_id")
    )
    if isinstance(kinds.get(job["kind"]), DrivenKind):
        for assignment_id, _ in waiting:
            dispatch.assignment_end(
                assignment_id=assignment_id,
                to=AssignmentState.CANCELLED,
                reason="its job stopped before the round closed: not aggregated, not paid",
            )
    else:
        for task_id in sorted({task_id for _, task_id in waiting}, key=str):
            enqueue(TaskName.TASK_VERIFY, task_id)
    return len(waiting)


def job_complete_if_done(*, job_id: UUID) -> bool:
    """A running job whose every task is completed is completed (driven kinds complete their jobs themselves);
    its kind's on_complete task then runs (a render job's merge)."""
    kind_name = Job.objects.filter(id=job_id).values_list("kind", flat=True).first()
    if kind_name is None or isinstance(kinds.get(kind_name), DrivenKind):
        return False
    if Task.objects.filter(job_id=job_id).exclude(state=TaskState.COMPLETED).exists():
        return False
    done = job_transition(job_id=job_id, to=JobState.COMPLETED, reason="every task verified", strict=False)
    if done:
        on_complete = kinds.get(kind_name).on_complete
        if on_complete is not None:
            enqueue(on_complete, job_id)
    return done
