"""Per-node broker isolation: each node gets a Redis ACL user confined to its own key prefix, and the
marketplace publishes to a node through a producer that uses that prefix (see ARCHITECTURE.md, Dispatch).

Redis keeps ACL users in memory only (no ACL file here, nor in most managed Redis), so a restart loses them: the
node's row keeps its password's sha256, which is all `ACL SETUSER` needs to make the same user again."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

from django.conf import settings
from kombu import Connection
from redis.lock import Lock

from marketplace.celery import app
from marketplace.core.redis_admin import admin_client

logger = logging.getLogger(__name__)

AGENT_TASK = "nodeagent.run_assignment"
__all__ = [
    "admin_client",
    "assignment_publish",
    "broker_scripts_load",
    "broker_user_create",
    "broker_user_delete",
    "broker_user_restore",
    "broker_users_make",
    "broker_users_present",
    "node_prefix",
]
_lock = threading.Lock()
_connections: dict[tuple[int, str], Connection] = {}

# The only scripts a node may run (EVALSHA; it can neither EVAL nor load one): redis-py's lock, which kombu's Redis
# transport takes to restore unacknowledged messages. A worker that cannot release it dies, so the marketplace loads
# them before it makes any node user (a restarted Redis has an empty script cache).
NODE_SCRIPTS = (Lock.LUA_RELEASE_SCRIPT, Lock.LUA_EXTEND_SCRIPT, Lock.LUA_REACQUIRE_SCRIPT)


@dataclass(frozen=True)
class BrokerUser:
    """A node's broker credentials: the URL (with the password) goes to the agent once; the row keeps the hash."""

    username: str
    url: str
    prefix: str
    password_sha256: str


def node_prefix(node_id: UUID) -> str:
    """Every key the node may touch starts with this; no other node's prefix starts with it."""
    return f"{settings.REDIS_PREFIX}n.{node_id.hex}:"


def node_queue(node_id: UUID) -> str:
    return f"node.{node_id.hex}"


def node_username(node_id: UUID) -> str:
    return f"{node_users_prefix()}{node_id.hex}"


def node_users_prefix() -> str:
    """What the ACL usernames of this marketplace's nodes start with (another prefix's users are never touched)."""
    return f"{settings.REDIS_PREFIX.rstrip(':')}.node."


def password_new() -> tuple[str, str]:
    """A new broker password and its sha256 (hex), the form Redis ACL takes as `#<hex>`."""
    password = secrets.token_urlsafe(32)
    return password, hashlib.sha256(password.encode()).hexdigest()


def node_acl_rules(*, node_id: UUID, password_sha256: str) -> list[str]:
    """The node's ACL: keys and pub/sub channels only under its prefix, and none of the commands a Celery worker does
    not need that would let it see or stall others: no admin or dangerous commands (KEYS, FLUSHDB, CONFIG, ACL, INFO,
    DEBUG, MONITOR), no scripting but EVALSHA of the loaded NODE_SCRIPTS (an EVAL busy loop stalls every client),
    no SCAN or RANDOMKEY (they list every key name), no CLIENT (CLIENT LIST shows every connection). Celery 5.7 and
    kombu 5.7 workers run under it (tests/faults/test_node_acl.py). Memory cannot be bounded per user in Redis: the
    server's maxmemory (noeviction) bounds everyone's together."""
    prefix = node_prefix(node_id)
    return [
        "reset", "on", f"#{password_sha256}", "resetchannels", f"~{prefix}*", f"&{prefix}*",
        "+@all", "-@dangerous", "-@admin", "-@scripting", "+evalsha",
        "-scan", "-keys", "-randomkey", "-client", "-debug", "-monitor",
    ]  # fmt: skip


def broker_scripts_load() -> None:
    """Load the scripts node workers run by their sha (idempotent; Redis forgets them on restart)."""
    client = admin_client()
    for script in NODE_SCRIPTS:
        client.script_load(script)


def broker_scripts_present() -> bool:
    shas = [hashlib.sha1(script.encode()).hexdigest() for script in NODE_SCRIPTS]  # noqa: S324 - Redis's script ids
    return all(admin_client().script_exists(*shas))


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


def broker_user_create(*, node_id: UUID, password: str | None = None) -> BrokerUser:
    """Create (or reset) the node's ACL user with `password` (a new one if None); returns its credentials."""
    if password is None:
        password, digest = password_new()
    else:
        digest = hashlib.sha256(password.encode()).hexdigest()
    broker_user_restore(node_id=node_id, password_sha256=digest)
    username = node_username(node_id)
    return BrokerUser(username, _node_url(username, password), node_prefix(node_id), digest)


def broker_user_restore(*, node_id: UUID, password_sha256: str) -> None:
    """Make the node's ACL user again from its stored password hash (idempotent; open connections stay open)."""
    broker_users_make([(node_id, password_sha256)])


def broker_users_make(users: list[tuple[UUID, str]]) -> None:
    """Make (or reset) the ACL users of these (node id, password sha256) pairs, in one round trip, after loading
    the scripts their workers need."""
    broker_scripts_load()
    pipe = admin_client().pipeline(transaction=False)
    for node_id, digest in users:
        pipe.execute_command(
            "ACL", "SETUSER", node_username(node_id), *node_acl_rules(node_id=node_id, password_sha256=digest)
        )
    pipe.execute()


def broker_users_present() -> set[str]:
    """The ACL users of this marketplace's nodes that Redis has now."""
    ours = node_users_prefix()
    names = (u.decode() if isinstance(u, bytes) else str(u) for u in admin_client().execute_command("ACL", "USERS"))
    return {name for name in names if name.startswith(ours)}


def broker_user_hash(*, username: str) -> str | None:
    """The sha256 of the user's (first) password as Redis holds it; None if there is no such user."""
    found = admin_client().acl_getuser(username)
    passwords = found.get("passwords") if found else None
    return str(passwords[0]) if passwords else None


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
