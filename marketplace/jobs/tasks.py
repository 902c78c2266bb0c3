"""Celery tasks of the jobs app: each fetches by id and calls a service; all are safe to run twice. The tasks of
one work item (a split, a verification, a merge) are `deliveries.bounded`: a poison message is not redelivered
forever, and the work sweep (beat) queues again what a lost message or a killed worker left undone."""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task

from marketplace.core import deliveries
from marketplace.core.enqueue import SCHEDULE_PENDING_KEY, schedule_request
from marketplace.core.queues import TaskName, time_limits
from marketplace.core.redis_admin import forget
from marketplace.jobs import dispatch, services, verification, verify_batches
from marketplace.jobs.services import sweep

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.SCHEDULE.value, acks_late=True, **time_limits(TaskName.SCHEDULE))
def schedule_task() -> int:
    # Cleared before the run, so an event during the run asks for the next one.
    forget(SCHEDULE_PENDING_KEY)
    leased = dispatch.schedule()
    if leased:
        logger.info("scheduler leased %d replicas", len(leased))
    return len(leased)


def _split_poisoned(job_id: str) -> None:
    sweep.job_abandon(
        job_id=UUID(job_id),
        reason=f"could not start: splitting it stopped its worker {deliveries.MAX_DELIVERIES} times",
    )


@shared_task(name=TaskName.JOB_SPLIT.value, acks_late=True, **time_limits(TaskName.JOB_SPLIT))
@deliveries.bounded(TaskName.JOB_SPLIT, on_poisoned=_split_poisoned)
def job_split_task(job_id: str) -> int:
    count = services.job_split(job_id=UUID(job_id))
    logger.info("job %s split into %d tasks", job_id, count)
    return count


@shared_task(name=TaskName.LEASES_EXPIRE.value, acks_late=True, **time_limits(TaskName.LEASES_EXPIRE))
def leases_expire_task() -> int:
    expired = dispatch.assignments_expire()
    if expired:
        schedule_request()
    return expired


# A verification that keeps killing its worker rejects nothing (the replicas may be honest and the fault ours):
# it is logged and tried again at most once an hour (deliveries), until a try finishes or the job's deadline.
@shared_task(name=TaskName.TASK_VERIFY.value, acks_late=True, **time_limits(TaskName.TASK_VERIFY))
@deliveries.bounded(TaskName.TASK_VERIFY)
def task_verify_task(task_id: str) -> str:
    state = verification.task_verify(task_id=UUID(task_id))
    schedule_request()
    return state


# Many verifications per message (verify_batches); not delivery-bounded as a whole: a task id it took and did not
# finish is queued again by the work sweep, alone and bounded.
@shared_task(name=TaskName.VERIFY_DRAIN.value, acks_late=True, **time_limits(TaskName.VERIFY_DRAIN))
def verify_drain_task() -> int:
    return verify_batches.verify_drain()


@shared_task(name=TaskName.JOBS_EXPIRE.value, acks_late=True, **time_limits(TaskName.JOBS_EXPIRE))
def jobs_expire_task() -> int:
    return services.jobs_expire()


@shared_task(name=TaskName.WORK_SWEEP.value, acks_late=True, **time_limits(TaskName.WORK_SWEEP))
def work_sweep_task() -> dict[str, int]:
    return sweep.work_sweep()


# Like a verification, a merge that keeps killing its worker is tried again at most once an hour: the job's work
# is done and paid, only its output is missing.
@shared_task(name=TaskName.RENDER_MERGE.value, acks_late=True, **time_limits(TaskName.RENDER_MERGE))
@deliveries.bounded(TaskName.RENDER_MERGE)
def render_merge_task(job_id: str) -> str:
    output = services.job_output_build(job_id=UUID(job_id))
    return str(output.summary) if output else "nothing to merge"
