"""Celery tasks of the jobs app: each fetches by id and calls a service; all are safe to run twice."""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task
from django.conf import settings

from marketplace.core.queues import TaskName
from marketplace.jobs import dispatch, services, verification
from marketplace.nodes.broker import admin_client

logger = logging.getLogger(__name__)

# A scheduler run is requested by many events; while one is queued, more requests add nothing.
_SCHEDULE_PENDING_TTL = 10


def _pending_key() -> str:
    return f"{settings.REDIS_PREFIX}schedule-pending"


def schedule_request() -> None:
    if admin_client().set(_pending_key(), "1", nx=True, ex=_SCHEDULE_PENDING_TTL):
        schedule_task.delay()


@shared_task(name=TaskName.SCHEDULE.value, acks_late=True)
def schedule_task() -> int:
    # Cleared before the run, so an event during the run asks for the next one.
    admin_client().delete(_pending_key())
    leased = dispatch.schedule()
    if leased:
        logger.info("scheduler leased %d replicas", len(leased))
    return len(leased)


@shared_task(name=TaskName.JOB_SPLIT.value, acks_late=True)
def job_split_task(job_id: str) -> int:
    count = services.job_split(job_id=UUID(job_id))
    logger.info("job %s split into %d tasks", job_id, count)
    return count


@shared_task(name=TaskName.LEASES_EXPIRE.value, acks_late=True)
def leases_expire_task() -> int:
    expired = dispatch.assignments_expire()
    if expired:
        schedule_request()
    return expired


@shared_task(name=TaskName.TASK_VERIFY.value, acks_late=True)
def task_verify_task(task_id: str) -> str:
    state = verification.task_verify(task_id=UUID(task_id))
    schedule_request()
    return state


@shared_task(name=TaskName.JOBS_EXPIRE.value, acks_late=True)
def jobs_expire_task() -> int:
    return services.jobs_expire()


@shared_task(name=TaskName.RENDER_MERGE.value, acks_late=True)
def render_merge_task(job_id: str) -> str:
    output = services.job_output_build(job_id=UUID(job_id))
    return str(output.summary) if output else "nothing to merge"
