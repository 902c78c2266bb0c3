"""Issue [faults] item 8, the node ACL: with a node's real broker credentials on the real Redis, every command that
would stall the server (an EVAL busy loop, a loaded function, DEBUG SLEEP), list what others hold (SCAN, KEYS,
RANDOMKEY, CLIENT LIST, MONITOR) or reach pub/sub outside the node's prefix is refused, while the node's real Celery
worker still consumes its own queue under that ACL. Memory cannot be bounded per ACL user: the embedded (and compose)
Redis bound it for everyone with maxmemory, refusing writes rather than evicting messages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from redis.lock import Lock

from marketplace.core import embedded_redis
from marketplace.nodes import broker, services
from tests.factories import UserFactory
from tests.faults.node_worker import NodeWorker, marketplace
from tests.helpers import wait_for
from tests.protocol.messages import an_assignment

pytestmark = pytest.mark.django_db

BUSY_LOOP = "while true do end"
BUSY_FUNCTION = "#!lua name=stall\nredis.register_function('stall', function() while true do end end)"


@pytest.fixture
def enrolled() -> Iterator[dict[str, services.Enrolment]]:
    operator = UserFactory(username="acl-owner")
    nodes = {
        name: services.node_enroll(
            operator=operator, name=name, wallet_address="0x" + "3" * 40, capabilities={}, slots=1, min_price={}
        )
        for name in ("a", "b")
    }
    yield nodes
    for enrolment in nodes.values():
        broker.broker_user_delete(username=enrolment.node.broker_username)


def _subscribe(client: redis.Redis, channel: str, *, pattern: bool = False) -> None:
    pubsub = client.pubsub()
    (pubsub.psubscribe if pattern else pubsub.subscribe)(channel)
    pubsub.get_message(timeout=1)


# Each attack: the command as ACL DRYRUN checks it, and the call the node makes.
ATTACKS: dict[str, tuple[list[str], Callable[[redis.Redis, str], Any]]] = {
    "an EVAL busy loop": (["EVAL", BUSY_LOOP, "0"], lambda c, other: c.eval(BUSY_LOOP, 0)),
    "loading a busy script": (["SCRIPT", "LOAD", BUSY_LOOP], lambda c, other: c.script_load(BUSY_LOOP)),
    "loading a busy function": (["FUNCTION", "LOAD", BUSY_FUNCTION], lambda c, other: c.function_load(BUSY_FUNCTION)),
    "SCAN": (["SCAN", "0"], lambda c, other: c.scan()),
    "KEYS": (["KEYS", "*"], lambda c, other: c.keys("*")),
    "RANDOMKEY": (["RANDOMKEY"], lambda c, other: c.randomkey()),
    "CLIENT LIST": (["CLIENT", "LIST"], lambda c, other: c.client_list()),
    "CLIENT KILL": (["CLIENT", "KILL", "TYPE", "normal"], lambda c, other: c.client_kill_filter(_type="normal")),
    "MONITOR": (["MONITOR"], lambda c, other: c.execute_command("MONITOR")),
    "PUBLISH on another node's channel": (
        ["PUBLISH", "{other}events", "x"],
        lambda c, other: c.publish(f"{other}events", "forged"),
    ),
    "SUBSCRIBE to another node's channel": (
        ["SUBSCRIBE", "{other}events"],
        lambda c, other: _subscribe(c, f"{other}events"),
    ),
    "SUBSCRIBE to a marketplace channel": (
        ["SUBSCRIBE", f"{settings.REDIS_PREFIX}events"],
        lambda c, other: _subscribe(c, f"{settings.REDIS_PREFIX}events"),
    ),
    "PSUBSCRIBE *": (["PSUBSCRIBE", "*"], lambda c, other: _subscribe(c, "*", pattern=True)),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_node_cannot_stall_redis_list_what_others_hold_or_leave_its_prefix(
    enrolled: dict[str, services.Enrolment], attack: str
) -> None:
    a, b = enrolled["a"], enrolled["b"]
    assert a.broker_url is not None
    assert b.broker_prefix is not None
    command, call = ATTACKS[attack]
    command = [part.replace("{other}", b.broker_prefix) for part in command]
    # Redis's own verdict first (it runs nothing): a busy loop that the ACL let through would stall the server.
    verdict = broker.admin_client().execute_command("ACL", "DRYRUN", a.node.broker_username, *command)
    assert verdict != b"OK", f"{attack} is allowed to the node"
    assert b"no permissions" in verdict.lower()
    with pytest.raises(redis.exceptions.NoPermissionError):
        call(redis.Redis.from_url(a.broker_url), b.broker_prefix)


def test_debug_sleep_is_refused_to_a_node(enrolled: dict[str, services.Enrolment]) -> None:
    a = enrolled["a"]
    assert a.broker_url is not None
    verdict = broker.admin_client().execute_command("ACL", "DRYRUN", a.node.broker_username, "DEBUG", "SLEEP", "0")
    assert b"no permissions" in verdict.lower()
    # Servers that keep DEBUG off for everyone (enable-debug-command no) refuse it before the ACL does.
    with pytest.raises(redis.exceptions.ResponseError):
        redis.Redis.from_url(a.broker_url).execute_command("DEBUG", "SLEEP", "0")


def test_a_node_can_run_the_loaded_lock_scripts_but_no_script_of_its_own(
    enrolled: dict[str, services.Enrolment],
) -> None:
    a = enrolled["a"]
    assert a.broker_url is not None
    assert a.broker_prefix is not None
    client = redis.Redis.from_url(a.broker_url)
    # What kombu does to restore unacknowledged messages: take and release redis-py's lock in its own prefix.
    lock = client.lock(f"{a.broker_prefix}unacked_mutex", timeout=10)
    assert lock.acquire(blocking=False)
    lock.release()
    assert client.get(f"{a.broker_prefix}unacked_mutex") is None
    with pytest.raises(redis.exceptions.NoScriptError):
        client.evalsha("0" * 40, 0)
    assert Lock.LUA_RELEASE_SCRIPT in broker.NODE_SCRIPTS


def test_the_node_still_works_its_own_queue_and_channel(enrolled: dict[str, services.Enrolment]) -> None:
    a = enrolled["a"]
    assert a.broker_url is not None
    assert a.broker_prefix is not None
    client = redis.Redis.from_url(a.broker_url)
    queue = f"{a.broker_prefix}{broker.node_queue(a.node.id)}"
    client.lpush(queue, "x")
    assert client.brpop([queue], timeout=1) == (queue.encode(), b"x")
    assert client.publish(f"{a.broker_prefix}events", "hello") == 0


@pytest.mark.slow
def test_the_real_node_worker_consumes_its_queue_under_the_tightened_acl(
    enrolled: dict[str, services.Enrolment], tmp_path: Path
) -> None:
    a = enrolled["a"]
    with marketplace() as market:
        node_worker = NodeWorker(tmp_path, a, market.url).start()
        try:
            # Consuming means it came through kombu's start-up, which takes and releases a lock by EVALSHA.
            node_worker.wait_health(True)
            message = an_assignment(assignment_id="6c1d1f8e-0000-4000-8000-00000000acl1", input_urls=[])
            broker.assignment_publish(node_id=a.node.id, message=message.to_json())
            wait_for(lambda: market.started(message.assignment_id), timeout=30, what="the worker to start the job")
            assert node_worker.health().ok
        finally:
            node_worker.stop()


def test_the_embedded_redis_refuses_a_node_filling_memory_and_evicts_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis cannot bound one ACL user's memory: the server's maxmemory bounds everyone's, and never by eviction.
    monkeypatch.setenv(embedded_redis.MAXMEMORY_VARIABLE, "8mb")
    server, _ = embedded_redis.start(tmp_path)
    try:
        admin = redis.Redis.from_url(server.url)
        assert admin.config_get("maxmemory*")["maxmemory-policy"] == "noeviction"
        assert int(admin.config_get("maxmemory")["maxmemory"]) == 8 * 2**20
        node_id = uuid.uuid4()
        password, digest = broker.password_new()
        admin.execute_command(
            "ACL", "SETUSER", "filler", *broker.node_acl_rules(node_id=node_id, password_sha256=digest)
        )
        queue = f"{broker.node_prefix(node_id)}{broker.node_queue(node_id)}"
        admin.lpush(queue, "an assignment")
        node = redis.Redis(host="127.0.0.1", port=server.port, username="filler", password=password)
        junk = (f"{broker.node_prefix(node_id)}junk:{i}" for i in range(200))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            all(node.set(key, b"x" * 100_000) for key in junk)
        assert admin.lrange(queue, 0, -1) == [b"an assignment"]
    finally:
        embedded_redis.stop(tmp_path)


def test_the_embedded_redis_has_a_default_bound_and_a_bad_one_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(embedded_redis.MAXMEMORY_VARIABLE, "lots")
    with pytest.raises(embedded_redis.EmbeddedRedisError, match="HASHWORK_REDIS_MAXMEMORY='lots'"):
        embedded_redis.start(tmp_path)
    assert embedded_redis.running(tmp_path) is None
    monkeypatch.delenv(embedded_redis.MAXMEMORY_VARIABLE)
    server, _ = embedded_redis.start(tmp_path)
    try:
        assert int(redis.Redis.from_url(server.url).config_get("maxmemory")["maxmemory"]) == 512 * 2**20
    finally:
        embedded_redis.stop(tmp_path)
