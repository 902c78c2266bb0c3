"""The marketplace's own (admin) Redis connection, one per process, created after any fork."""

from __future__ import annotations

import os
import threading

import redis
from django.conf import settings

_lock = threading.Lock()
_admin: dict[int, redis.Redis] = {}


def admin_client() -> redis.Redis:
    pid = os.getpid()
    with _lock:
        if pid not in _admin:
            _admin[pid] = redis.Redis.from_url(settings.REDIS_URL)
        return _admin[pid]


def prefixed(key: str) -> str:
    """`key` in the marketplace's own key space (REDIS_PREFIX): what every marketplace-wide key is stored under."""
    return f"{settings.REDIS_PREFIX}{key}"


def once_per(key: str, seconds: int) -> bool:
    """True for the first caller of `key` in a window of `seconds` (marketplace-wide), False for the others."""
    return bool(admin_client().set(prefixed(key), "1", nx=True, ex=seconds))


def forget(key: str) -> None:
    admin_client().delete(prefixed(key))
