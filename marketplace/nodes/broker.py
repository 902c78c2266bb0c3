"""Per-node broker isolation: each node gets a Redis ACL user confined to its own key prefix, and the
marketplace publishes to a node through a producer that uses that prefix (see ARCHITECTURE.md, Dispatch)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

from django.conf import settings
from kombu import Connection

from marketplace.celery import app
from marketplace.core.redis_admin import admin_client

logger = logging.getLogger(__name__)

AGENT_TASK = "nodeagent.run_assignment"
__all__ = ["admin_client", "assignment_publish", "broker_user_create", "broker_user_delete", "node_prefix"]
_lock = threading.Lock()
_connections: dict[tuple[int, str], Connection] = {}


def node_prefix(node_id: UUID) -> str:
    """Every key the node may touch starts with this; no other node's prefix starts with it."""
    return f"{settings.REDIS_PREFIX}n.{node_id.hex}:"


def node_queue(node_id: UUID) -> str:
    return f"node.{node_id.hex}"


def node_username(node_id: UUID) -> str:
    return f"{settings.REDIS_PREFIX.rstrip(':')}.node.{node_id.hex}"


def _node_url(username: str, password: str) -> str:
    base = settings.HASHWORK["NODE_BROKER_URL"] or settings.REDIS_URL
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", parts.query, ""))


def broker_user_create(*, node_id: UUID) -> tuple[str, str, str]:
    """Create (or reset) the node's ACL user; returns (username, broker URL, key prefix)."""
    username = node_username(node_id)
    password = secrets.token_urlsafe(32)
    prefix = node_prefix(node_id)
    # Keys and pub/sub channels only under the node's prefix; no admin or dangerous commands (KEYS, FLUSHDB,
    # CONFIG, ACL, CLIENT KILL, …). Celery 5.7/kombu 5.7 workers run with this (ARCHITECTURE.md).
    admin_client().execute_command(
        "ACL", "SETUSER", username, "reset", "on", f">{password}", f"~{prefix}*", f"&{prefix}*",
        "+@all", "-@dangerous", "-@admin",
    )  # fmt: skip
    return username, _node_url(username, password), prefix


def broker_user_delete(*, username: str) -> None:
    """Delete the node's ACL user; Redis drops the connections it has open at once."""
    if username:
        admin_client().execute_command("ACL", "DELUSER", username)
        logger.info("broker user %s deleted", username)


def _connection(prefix: str) -> Connection:
    key = (os.getpid(), prefix)
    with _lock:
        conn = _connections.get(key)
        if conn is None:
            conn = app.connection_for_write(transport_options={"global_keyprefix": prefix})
            _connections[key] = conn
        return conn


def assignment_publish(*, node_id: UUID, message: dict[str, Any]) -> None:
    """Put an assignment message on the node's own queue, inside its key prefix."""
    conn = _connection(node_prefix(node_id))
    app.send_task(AGENT_TASK, args=[message], queue=node_queue(node_id), connection=conn, ignore_result=True)
