"""Bounded redelivery of work items. Broker delivery is at-least-once, and with `acks_late` and requeue on worker
loss a task whose worker is OOM- or SIGKILLed is delivered again at once, forever: one poison message (a
memory bomb, a replay that never ends) would take a worker down again and again. So every delivery of a work
item (a task name with the arguments that identify its item) is counted in Redis:

- a delivery that starts sets a running marker (the worker's pid) and adds one to the item's count; one that
  finishes clears both. The marker lives RUNNING_TTL_SECONDS and a thread of the running delivery renews it, so a
  delivery whose worker was killed (even its master, whose unacknowledged message Redis returns only after the
  visibility timeout) stops counting as running within that time, and the work sweep can queue its item again;
- once MAX_DELIVERIES deliveries have started without finishing (killed, timed out or raised), the next one
  does not run the item: it logs an error with the ids, calls the item's `on_poisoned` (a job that cannot be
  split or whose round cannot be closed fails, with the reason; a verification rejects nothing) and marks the
  item poisoned for POISON_SECONDS, during which every delivery of it is dropped;
- after that hour the item gets one more try (the work sweep queues it again): if that one does not finish
  either, it is poisoned for another hour. So a poisoned item costs at most one worker per hour.

The sweeps read `running` and `poisoned` to leave alone what is being done or was given up on."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import admin_client, prefixed

logger = logging.getLogger(__name__)

MAX_DELIVERIES = 3
POISON_SECONDS = 3600
# A count that is never finished nor poisoned (its item vanished) is forgotten after a day.
COUNT_SECONDS = 86_400
# A running marker lives this long unless its delivery, still running, renews it every RUNNING_RENEW_SECONDS.
RUNNING_TTL_SECONDS = 30
RUNNING_RENEW_SECONDS = 10

POISONED = "poisoned"

F = TypeVar("F", bound=Callable[..., Any])


def item_key(name: TaskName, args: Sequence[Any]) -> str:
    """The Redis key stem of one work item: the task's name and the arguments that identify the item."""
    return prefixed(f"work:{name.value}:" + ":".join(str(a) for a in args))


def running(name: TaskName, *args: Any) -> bool:
    """Whether a delivery of this item is running now (or was killed less than the queue's time limit ago)."""
    return bool(admin_client().exists(f"{item_key(name, args)}:running"))


def poisoned(name: TaskName, *args: Any) -> bool:
    """Whether this item was given up on for the hour (MAX_DELIVERIES deliveries did not finish)."""
    return bool(admin_client().exists(f"{item_key(name, args)}:poisoned"))


def deliveries(name: TaskName, *args: Any) -> int:
    """How many deliveries of this item have started without finishing."""
    count = admin_client().get(f"{item_key(name, args)}:count")
    return int(count or 0)


def bounded(
    name: TaskName, *, identity: int | None = None, on_poisoned: Callable[..., object] | None = None
) -> Callable[[F], F]:
    """Wrap a Celery task body so that its item (the first `identity` arguments, all by default) is run at most
    MAX_DELIVERIES times without finishing, then poisoned as the module says; a dropped delivery returns
    POISONED."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any) -> Any:
            stem = item_key(name, args[:identity] if identity is not None else args)
            redis = admin_client()
            if redis.exists(f"{stem}:poisoned"):
                logger.warning("%s%s is poisoned (given up on for the hour): delivery dropped", name.value, args)
                return POISONED
            # Created with its expiry first, so that a crash between the two commands leaves no immortal key.
            redis.set(f"{stem}:count", 0, nx=True, ex=COUNT_SECONDS)
            count = int(redis.incr(f"{stem}:count"))
            if count > MAX_DELIVERIES:
                redis.set(f"{stem}:poisoned", count - 1, ex=POISON_SECONDS)
                # Once the hour is over the next delivery is the last allowed one: one try per hour.
                redis.set(f"{stem}:count", MAX_DELIVERIES - 1, ex=COUNT_SECONDS)
                logger.error(
                    "%s%s: %d deliveries did not finish (worker killed, time limit or crash); not run again for "
                    "%d s",
                    name.value, args, count - 1, POISON_SECONDS,
                )  # fmt: skip
                if on_poisoned is not None:
                    on_poisoned(*args)
                return POISONED
            redis.set(f"{stem}:running", os.getpid(), ex=RUNNING_TTL_SECONDS)
            done = threading.Event()
            threading.Thread(target=_renew, args=(f"{stem}:running", done), daemon=True).start()
            try:
                result = func(*args)
            except BaseException:
                done.set()
                redis.delete(f"{stem}:running")
                raise
            done.set()
            redis.delete(f"{stem}:running", f"{stem}:count")
            return result

        return run  # type: ignore[return-value]

    return wrap


def _renew(key: str, done: threading.Event) -> None:
    """Keep a running delivery's marker alive until it ends; a killed worker stops renewing it."""
    while not done.wait(RUNNING_RENEW_SECONDS):
        try:
            admin_client().expire(key, RUNNING_TTL_SECONDS, xx=True)
        except Exception:  # Redis away for a moment: the next renewal tries again
            logger.debug("could not renew %s", key, exc_info=True)
