"""Celery tasks of the nodes app: the node broker users, kept equal to the active nodes (a Redis restart loses them,
a ban may fail to delete one)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import shared_task
from celery.signals import worker_ready

from marketplace.celery import app
from marketplace.core.queues import TaskName, time_limits
from marketplace.nodes import services

logger = logging.getLogger(__name__)


# Beat runs it every few seconds (marketplace.core.queues); every marketplace worker also runs it as it starts.
@shared_task(name=TaskName.BROKER_USERS_RESTORE.value, acks_late=True, **time_limits(TaskName.BROKER_USERS_RESTORE))
def broker_users_restore_task(full: bool = False) -> int:
    """Restore missing node users and delete those of inactive nodes; returns how many changed. Redis being down
    is a warning: the next run tries again."""
    try:
        done = services.broker_users_restore(full=full)
    except redis.RedisError as exc:
        logger.warning("node broker users not checked: %s", exc)
        return 0
    return len(done.restored) + len(done.deleted)


@worker_ready.connect
def broker_users_restore_on_start(sender: Any = None, **kwargs: Any) -> None:
    """A marketplace worker starting (often with a Redis that restarted too) makes every active node's user again
    from the stored hashes, with the current ACL rules. Never stops the worker from starting."""
    if getattr(sender, "app", None) is not app:
        return  # another Celery app in this process (a test's node worker)
    try:
        done = services.broker_users_restore(full=True)
    except Exception:
        logger.exception("node broker users not restored at worker start; beat retries")
        return
    logger.info(
        "node broker users at worker start: %d restored, %d deleted, %d unrecoverable",
        len(done.restored), len(done.deleted), len(done.unrecoverable),
    )  # fmt: skip
