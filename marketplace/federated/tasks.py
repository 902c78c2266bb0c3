"""Celery tasks of train jobs: closing rounds (the replay queue, its own pool) and the sweep of rounds that are
due (beat)."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from marketplace.core import deliveries
from marketplace.core.queues import TaskName, time_limits
from marketplace.federated import rounds
from marketplace.jobs.services.sweep import job_abandon


def _close_poisoned(job_id: str, index: int, why: str) -> None:
    job_abandon(
        job_id=UUID(job_id),
        reason=f"round {index} could not be closed: closing it stopped its worker {deliveries.MAX_DELIVERIES} times",
    )


# A round is one item whatever asked to close it (its quorum, its deadline): the first two arguments.
@shared_task(name=TaskName.ROUND_CLOSE.value, acks_late=True, **time_limits(TaskName.ROUND_CLOSE))
@deliveries.bounded(TaskName.ROUND_CLOSE, identity=2, on_poisoned=_close_poisoned)
def round_close_task(job_id: str, index: int, why: str) -> str:
    return rounds.round_close(job_id=UUID(job_id), index=int(index), why=why)


@shared_task(name=TaskName.ROUNDS_DUE.value, acks_late=True, **time_limits(TaskName.ROUNDS_DUE))
def rounds_due_task() -> int:
    return rounds.rounds_due()
