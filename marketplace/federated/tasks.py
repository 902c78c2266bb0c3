"""Celery tasks of train jobs: closing rounds (aggregate queue) and the deadline sweep (beat)."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from marketplace.core.queues import TIME_LIMITS, Queue, TaskName
from marketplace.federated import rounds


@shared_task(name=TaskName.ROUND_CLOSE.value, acks_late=True, **TIME_LIMITS[Queue.AGGREGATE])
def round_close_task(job_id: str, index: int, why: str) -> str:
    return rounds.round_close(job_id=UUID(job_id), index=int(index), why=why)


@shared_task(name=TaskName.ROUNDS_DUE.value, acks_late=True, **TIME_LIMITS[Queue.SCHEDULER])
def rounds_due_task() -> int:
    return rounds.rounds_due()
