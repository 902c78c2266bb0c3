"""Verifications in batches: a submitted result puts its task on a Redis set of tasks to verify, and one drain task
verifies many of them per Celery message, instead of one message (and one delivery bookkeeping) per result.

Nothing is verified only because of this set: a task id whose drain was lost (its worker killed after taking it)
is found again by the work sweep, which queues a single, delivery-bounded verification for every task whose
result has waited too long (`jobs.services.sweep.verifies_due`). Verifying twice is harmless (verdicts re-check the
replicas they judged). Several drains may run at once, one per verify worker process: each takes its own ids."""

from __future__ import annotations

import logging
import time
from uuid import UUID

from django.db import transaction

from marketplace.core.enqueue import publish, schedule_request
from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import admin_client, forget, once_per, prefixed
from marketplace.jobs import verification

logger = logging.getLogger(__name__)

PENDING_KEY = "verify-pending"
DRAIN_REQUESTED_KEY = "verify-drain-requested"
DRAIN_REQUESTED_TTL = 10
# Task ids taken per round: small, so that several drains share a backlog and a slow kind (a render's re-render)
# never holds many ids in one process.
TAKE = 20
# A drain stops taking ids after this long (seconds), well inside the verify queue's time limit, and asks for the
# next drain if ids are left.
DRAIN_BUDGET_SECONDS = 60.0


def verify_request(task_id: UUID) -> None:
    """Verify this task soon (after the current transaction commits)."""
    transaction.on_commit(lambda: _request_now(task_id))


def _request_now(task_id: UUID) -> None:
    try:
        admin_client().sadd(prefixed(PENDING_KEY), str(task_id))
        _drain_ask()
    except Exception as exc:  # the caller has committed; the work sweep finds a result left unverified
        logger.warning("could not queue the verification of task %s (%s); the work sweep queues it", task_id, exc)


def _drain_ask() -> None:
    if once_per(DRAIN_REQUESTED_KEY, DRAIN_REQUESTED_TTL) and not publish(TaskName.VERIFY_DRAIN, []):
        forget(DRAIN_REQUESTED_KEY)  # the next request tries again


def pending() -> int:
    """How many tasks wait in the set."""
    return int(admin_client().scard(prefixed(PENDING_KEY)))


def verify_drain(*, budget_seconds: float = DRAIN_BUDGET_SECONDS) -> int:
    """Verify the waiting tasks, TAKE at a time, for at most `budget_seconds`; returns how many were verified."""
    # Cleared first: a request during this drain asks for another one (which then shares the backlog).
    forget(DRAIN_REQUESTED_KEY)
    redis, key = admin_client(), prefixed(PENDING_KEY)
    deadline = time.monotonic() + budget_seconds
    verified = 0
    while time.monotonic() < deadline:
        taken = redis.spop(key, TAKE) or []
        if not taken:
            break
        if redis.scard(key):
            _drain_ask()  # a backlog: another verify process may take part of it
        for raw in taken:
            task_id = UUID(raw.decode() if isinstance(raw, bytes) else raw)
            try:
                verification.task_verify(task_id=task_id)
                verified += 1
            except Exception:  # one task's failure is not the others': the sweep queues it again, bounded
                logger.exception("verification of task %s failed; the work sweep queues it again", task_id)
    if redis.scard(key):
        _drain_ask()
    if verified:
        schedule_request()
    return verified
