"""Celery tasks of the jobs app: each fetches by id and calls a service."""

from __future__ import annotations

import logging
from uuid import UUID

from celery import shared_task

from marketplace.core.queues import TaskName
from marketplace.jobs import services

logger = logging.getLogger(__name__)


@shared_task(name=TaskName.JOB_SPLIT.value, acks_late=True, max_retries=5, default_retry_delay=2)
def job_split_task(job_id: str) -> int:
    count = services.job_split(job_id=UUID(job_id))
    logger.info("job %s split into %d tasks", job_id, count)
    return count


@shared_task(name=TaskName.JOBS_EXPIRE.value, acks_late=True)
def jobs_expire_task() -> int:
    return services.jobs_expire()
