"""The gate every job and task state change goes through: a conditional UPDATE allowed by the transition tables
in models.py (assignments have theirs in dispatch.assignment_end, which also settles the counters they hold)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.utils import timezone

from marketplace.core.exceptions import Conflict, NotFound
from marketplace.jobs.models import JOB_TERMINAL, JOB_TRANSITIONS, TASK_TRANSITIONS, Job, JobState, Task

logger = logging.getLogger(__name__)


def job_transition(*, job_id: UUID, to: str, reason: str = "", strict: bool = True) -> bool:
    """Move a job to state `to` if its current state allows it. With `strict`, a refused move raises Conflict
    (NotFound for no such job); without it, the caller learns from the False that someone else moved it first."""
    sources = JOB_TRANSITIONS.get(to, frozenset())
    now = timezone.now()
    updates: dict[str, Any] = {"state": to, "updated_at": now}
    if reason:
        updates["state_reason"] = reason
    if to == JobState.FUNDED:
        updates["funded_at"] = now
    if to in JOB_TERMINAL:
        updates["finished_at"] = now
    if Job.objects.filter(id=job_id, state__in=sources).update(**updates) == 1:
        logger.info("job %s → %s %s", job_id, to, reason)
        return True
    if not strict:
        return False
    current = Job.objects.filter(id=job_id).values_list("state", flat=True).first()
    if current is None:
        raise NotFound("No such job.")
    raise Conflict(
        f"A {current} job cannot become {to}.",
        {"state": current, "allowed_from": sorted(str(s) for s in sources)},
    )


def task_transition(*, task_id: UUID, to: str, reason: str = "", **fields: Any) -> bool:
    """Move a task to state `to` if its current state allows it; False if it had moved already."""
    updates: dict[str, Any] = {"state": to, "updated_at": timezone.now(), **fields}
    if reason:
        updates["state_reason"] = reason
    return Task.objects.filter(id=task_id, state__in=TASK_TRANSITIONS[to]).update(**updates) == 1


def tasks_transition(*, tasks: Any, to: str, reason: str = "") -> int:
    """Move every task of a queryset whose state allows it to `to`; returns how many moved."""
    updates: dict[str, Any] = {"state": to, "updated_at": timezone.now()}
    if reason:
        updates["state_reason"] = reason
    return int(tasks.filter(state__in=TASK_TRANSITIONS[to]).update(**updates))
