"""The node worker's broker connection, as the agent needs to know it: the worker records in STATE/broker.json
whether it consumes its queue (else the last connection error), and the agent puts that in every heartbeat.

The worker never gives up reconnecting, and retries every few seconds at most: after a Redis restart the
marketplace makes the node's ACL user again with the same password, and the worker consumes again within
seconds of that, without a restart and without new credentials."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps
from celery.worker.consumer import Consumer
from redis.backoff import NoBackoff
from redis.retry import Retry

from nodeagent import config as agent_config
from protocol import BrokerHealth
from protocol.heartbeat import BROKER_ERROR_MAX

logger = logging.getLogger("nodeagent.broker")
BROKER_HEALTH_FILE = "broker.json"
# Seconds between reconnection attempts: 1, 2, 3, then every RECONNECT_MAX_SECONDS (Celery's default grows to 30).
RECONNECT_MAX_SECONDS = 3.0
STARTING = "the worker has not connected to the broker yet"
# The probe pings the broker this often from the consumer's event loop, and waits this long for an answer.
PROBE_SECONDS = 2.0
PROBE_TIMEOUT = 3.0

# Set by the worker's main() (a module of its own: run as `python -m`, the worker module is __main__ too).
_config: agent_config.AgentConfig | None = None


def broker_health_path(cfg: agent_config.AgentConfig) -> Path:
    return cfg.state / BROKER_HEALTH_FILE


def broker_health_write(cfg: agent_config.AgentConfig, *, ok: bool, error: str = "") -> None:
    """Record the worker's broker connection for the agent (atomically: the agent reads it at any moment)."""
    path = broker_health_path(cfg)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"ok": ok, "error": "" if ok else error[:BROKER_ERROR_MAX]}))
    tmp.replace(path)


def broker_health(cfg: agent_config.AgentConfig) -> BrokerHealth:
    """What the worker last recorded; not ok while it has recorded nothing (starting) or something unreadable."""
    try:
        return BrokerHealth.from_json(json.loads(broker_health_path(cfg).read_text()))
    except (OSError, ValueError):
        return BrokerHealth(ok=False, error=STARTING)


def configure(cfg: agent_config.AgentConfig) -> None:
    """Where this worker process records its broker connection (its agent's state directory)."""
    global _config
    _config = cfg


def _report(*, ok: bool, error: str = "") -> None:
    if _config is not None:
        with contextlib.suppress(OSError):
            broker_health_write(_config, ok=ok, error=error)


def _describe(exc: BaseException) -> str:
    # kombu wraps redis-py's errors (OperationalError from AuthenticationError: "WRONGPASS …"); name the cause.
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"[:BROKER_ERROR_MAX]


class NodeConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, which records each failed connection attempt and each lost connection, and retries every
    RECONNECT_MAX_SECONDS at most."""

    def ensure_connected(self, conn: Any) -> Any:
        connect = conn.ensure_connection

        def ensure(errback: Any = None, max_retries: Any = None, **options: Any) -> Any:
            def report(exc: BaseException, interval: float) -> None:
                _report(ok=False, error=_describe(exc))
                if errback is not None:
                    errback(exc, interval)

            options.update(interval_start=1, interval_step=1, interval_max=RECONNECT_MAX_SECONDS)
            return connect(report, max_retries, **options)

        conn.ensure_connection = ensure
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        _report(ok=False, error=_describe(exc))
        super().on_connection_error_after_connected(exc)


class BrokerProbe:
    """Pings the broker with the node's credentials on a connection of its own, every PROBE_SECONDS from the
    consumer's event loop. A consumer busy with a task reads nothing, so it learns of a Redis restart only at its
    next read, and a failed read then (its user not made again yet) has been seen to leave it consuming nothing,
    for good, while it looks connected. The probe's connection is closed by the restart and never retried
    quietly, so it notices at once and records why; once the broker answers again it raises a connection error
    into the event loop, and the consumer reconnects as after any lost connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.Redis | None = None
        self.failed = False

    def tick(self) -> None:
        try:
            if self.client is None:
                self.client = redis.Redis.from_url(
                    self.url, single_connection_client=True, retry=Retry(NoBackoff(), 0),
                    socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT,
                )  # fmt: skip
            self.client.ping()
        except redis.RedisError as exc:
            self.close()
            self.failed = True
            _report(ok=False, error=_describe(exc))
            return
        if self.failed:
            self.close()
            raise redis.ConnectionError("the broker answers again after a failure: the consumer reconnects")

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):
                self.client.close()
            self.client = None


class BrokerConsuming(bootsteps.StartStopStep):  # type: ignore[misc]
    """Started once the consumer consumes the node's queue again (after every reconnection): the broker is ok.
    Its probe runs on the event loop until the next reconnection, which cancels it and starts a new one."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.probe: BrokerProbe | None = None
        self.entry: Any = None

    def start(self, c: Any) -> None:
        _report(ok=True)
        logger.info("consuming %s", c.app.conf.task_default_queue)
        self._cancel()
        self.probe = BrokerProbe(c.app.conf.broker_url)
        if c.hub is not None:
            self.entry = c.hub.call_repeatedly(PROBE_SECONDS, self.probe.tick)

    def shutdown(self, c: Any) -> None:
        self._cancel()
        _report(ok=False, error="the worker stopped")

    def _cancel(self) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None
