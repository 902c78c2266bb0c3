"""Celery tasks of train jobs: closing rounds (aggregate queue) and the deadline sweep (beat)."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from marketplace.core.queues import TaskName
from marketplace.federated import services


@shared_task(name=TaskName.ROUND_CLOSE.value, acks_late=True)
def round_close_task(job_id: str, index: int, why: str) -> str:
    return services.round_close(job_id=UUID(job_id), index=int(index), why=why)


@shared_task(name=TaskName.ROUNDS_DUE.value, acks_late=True)
def rounds_due_task() -> int:
    return services.rounds_due()
