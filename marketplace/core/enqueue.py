"""Services start Celery work through here, by task name: sent after the current transaction commits (at once
outside one), so a worker never sees an id whose row is not there yet. No service imports a tasks module."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction

from marketplace.celery import app
from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import once_per

Arg = str | int | UUID

# A scheduler run is requested by many events; while one is queued, more requests add nothing.
SCHEDULE_PENDING_KEY = "schedule-pending"
SCHEDULE_PENDING_TTL = 10


def enqueue(name: TaskName, *args: Arg) -> None:
    """Run Celery task `name` with these (JSON) arguments once the transaction commits; UUIDs go as strings."""
    payload = [str(a) if isinstance(a, UUID) else a for a in args]
    transaction.on_commit(lambda: app.send_task(name.value, args=payload))


def schedule_request() -> None:
    """Ask for a scheduler run soon (after commit); many requests in a burst collapse into one run."""
    transaction.on_commit(_schedule_now)


def _schedule_now() -> None:
    if once_per(SCHEDULE_PENDING_KEY, SCHEDULE_PENDING_TTL):
        app.send_task(TaskName.SCHEDULE.value)
