"""Celery tasks of the jobs app: each fetches by id and calls a service; all are safe to run twice."""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task

from marketplace.core.enqueue import SCHEDULE_PENDING_KEY, schedule_request
from marketplace.core.queues import TIME_LIMITS, Queue, TaskName
from marketplace.core.redis_admin import forget
from marketplace.jobs import dispatch, services, verification

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.SCHEDULE.value, acks_late=True, **TIME_LIMITS[Queue.SCHEDULER])
def schedule_task() -> int:
    # Cleared before the run, so an event during the run asks for the next one.
    forget(SCHEDULE_PENDING_KEY)
    leased = dispatch.schedule()
    if leased:
        logger.info("scheduler leased %d replicas", len(leased))
    return len(leased)


@shared_task(name=TaskName.JOB_SPLIT.value, acks_late=True, **TIME_LIMITS[Queue.SCHEDULER])
def job_split_task(job_id: str) -> int:
    count = services.job_split(job_id=UUID(job_id))
    logger.info("job %s split into %d tasks", job_id, count)
    return count


@shared_task(name=TaskName.LEASES_EXPIRE.value, acks_late=True, **TIME_LIMITS[Queue.SCHEDULER])
def leases_expire_task() -> int:
    expired = dispatch.assignments_expire()
    if expired:
        schedule_request()
    return expired


@shared_task(name=TaskName.TASK_VERIFY.value, acks_late=True, **TIME_LIMITS[Queue.VERIFY])
def task_verify_task(task_id: str) -> str:
    state = verification.task_verify(task_id=UUID(task_id))
    schedule_request()
    return state


@shared_task(name=TaskName.JOBS_EXPIRE.value, acks_late=True, **TIME_LIMITS[Queue.SCHEDULER])
def jobs_expire_task() -> int:
    return services.jobs_expire()


@shared_task(name=TaskName.RENDER_MERGE.value, acks_late=True, **TIME_LIMITS[Queue.AGGREGATE])
def render_merge_task(job_id: str) -> str:
    output = services.job_output_build(job_id=UUID(job_id))
    return str(output.summary) if output else "nothing to merge"
