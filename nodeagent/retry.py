"""One retry helper for every network call: exponential backoff with full jitter, bounded in tries and time."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure worth retrying (network error, 5xx, 429)."""


def retry(
    call: Callable[[], T],
    *,
    what: str,
    tries: int = 6,
    base: float = 0.5,
    cap: float = 20.0,
    max_seconds: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying TransientError with waits drawn from [0, min(cap, base·2^n)]."""
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            return call()
        except TransientError as exc:
            elapsed = time.monotonic() - started
            if attempt == tries or elapsed >= max_seconds:
                raise
            wait = min(random.uniform(0, min(cap, base * 2 ** (attempt - 1))), max_seconds - elapsed)  # noqa: S311
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt, tries - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")
