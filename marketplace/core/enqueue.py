"""Services start Celery work through here, by task name: sent after the current transaction commits (at once
outside one), so a worker never sees an id whose row is not there yet. No service imports a tasks module.

A publish that fails (the broker restarting, a network blip) is retried a few times at once and then logged with
the task and its ids; it never raises into the caller, whose transaction has already committed (an API would
answer 500 for work it did). Nothing is lost by giving up: the work sweep (jobs.services.sweep, on beat) finds
work that is due and not done and queues it again."""

from __future__ import annotations

import logging
import time
from uuid import UUID

from django.db import transaction

from marketplace.celery import app
from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import once_per

logger = logging.getLogger(__name__)

Arg = str | int | UUID

# A scheduler run is requested by many events; while one is queued, more requests add nothing.
SCHEDULE_PENDING_KEY = "schedule-pending"
SCHEDULE_PENDING_TTL = 10

# Pauses between publish attempts (seconds): short, since the caller (often an API request) waits for them.
PUBLISH_PAUSES = (0.05, 0.25)


def enqueue(name: TaskName, *args: Arg) -> None:
    """Run Celery task `name` with these (JSON) arguments once the transaction commits; UUIDs go as strings."""
    payload = [str(a) if isinstance(a, UUID) else a for a in args]
    transaction.on_commit(lambda: publish(name, payload))


def publish(name: TaskName, args: list[str | int]) -> bool:
    """Send task `name` now; on failure retry after each of PUBLISH_PAUSES, then log it and return False (the
    work sweep queues it again). Never raises."""
    for pause in (*PUBLISH_PAUSES, None):
        try:
            app.send_task(name.value, args=args)
            return True
        except Exception as exc:  # any broker failure: the caller has committed and must not see it
            if pause is None:
                logger.error("could not queue %s%s: %s; the work sweep queues it again", name.value, tuple(args), exc)
                return False
            logger.warning("queueing %s%s failed (%s); retrying", name.value, tuple(args), exc)
            time.sleep(pause)
    return False


def schedule_request() -> None:
    """Ask for a scheduler run soon (after commit); many requests in a burst collapse into one run."""
    transaction.on_commit(_schedule_now)


def _schedule_now() -> None:
    try:
        if once_per(SCHEDULE_PENDING_KEY, SCHEDULE_PENDING_TTL):
            app.send_task(TaskName.SCHEDULE.value)
    except Exception as exc:  # beat runs the scheduler every few seconds anyway
        logger.warning("could not request a scheduler run (%s); beat starts the next one", exc)
