"""Each node's broker credentials reach only its own key space, on the real Redis (NOPERM everywhere else)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from marketplace.nodes import broker, services
from marketplace.nodes.models import Node
from nodeagent.worker import TASK_NAME
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def enrolled() -> Iterator[dict[str, Any]]:
    operator = UserFactory(username="rig-owner")
    nodes = {}
    for name in ("a", "b"):
        enrolment = services.node_enroll(
            operator=operator, name=name, wallet_address="0x" + "1" * 40, capabilities={}, slots=1, min_price={}
        )
        nodes[name] = enrolment
    yield nodes
    for enrolment in nodes.values():
        broker.broker_user_delete(username=enrolment.node.broker_username)


def _queue_key(enrolment: Any) -> str:
    return f"{enrolment.broker_prefix}{broker.node_queue(enrolment.node.id)}"


def test_enrolment_returns_a_broker_url_with_the_nodes_own_credentials(enrolled: dict[str, Any]) -> None:
    a = enrolled["a"]
    assert a.broker_url.startswith(f"redis://{broker.node_username(a.node.id)}:")
    assert a.broker_prefix == broker.node_prefix(a.node.id)
    assert redis.Redis.from_url(a.broker_url).ping()


def test_a_node_works_its_own_queue(enrolled: dict[str, Any]) -> None:
    a = enrolled["a"]
    client = redis.Redis.from_url(a.broker_url)
    client.lpush(_queue_key(a), "x")
    assert client.rpop(_queue_key(a)) == b"x"


@pytest.mark.parametrize(
    "attempt",
    [
        "read the other node's queue",
        "pop the other node's queue",
        "write into the other node's queue",
        "read a marketplace queue",
        "write into a marketplace queue",
        "list every key",
        "flush the database",
        "change the ACL",
        "listen on the other node's channel",
    ],
)
def test_a_node_cannot_touch_anything_outside_its_prefix(enrolled: dict[str, Any], attempt: str) -> None:
    a, b = enrolled["a"], enrolled["b"]
    client = redis.Redis.from_url(a.broker_url)
    other, internal = _queue_key(b), f"{settings.REDIS_PREFIX}mp.scheduler"
    actions = {
        "read the other node's queue": lambda: client.lrange(other, 0, -1),
        "pop the other node's queue": lambda: client.rpop(other),
        "write into the other node's queue": lambda: client.lpush(other, "forged"),
        "read a marketplace queue": lambda: client.llen(internal),
        "write into a marketplace queue": lambda: client.lpush(internal, "forged"),
        "list every key": lambda: client.keys("*"),
        "flush the database": lambda: client.flushdb(),
        "change the ACL": lambda: client.execute_command("ACL", "SETUSER", "evil", "on", ">x", "~*", "+@all"),
        "listen on the other node's channel": lambda: _subscribe(client, f"{b.broker_prefix}events"),
    }
    with pytest.raises(redis.exceptions.NoPermissionError):
        actions[attempt]()
    admin = broker.admin_client()
    assert admin.llen(other) == 0
    assert admin.llen(internal) == 0


def _subscribe(client: redis.Redis, channel: str) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)


def test_a_node_worker_consumes_what_the_marketplace_publishes_to_it(enrolled: dict[str, Any]) -> None:
    a = enrolled["a"]
    received = threading.Event()
    seen: list[dict[str, Any]] = []
    app = Celery("node-a", broker=a.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": a.broker_prefix},
        task_default_queue=broker.node_queue(a.node.id),
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_ignore_result=True,
    )

    @app.task(name=TASK_NAME)
    def run_assignment(message: dict[str, Any]) -> None:
        seen.append(message)
        received.set()

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        broker.assignment_publish(node_id=a.node.id, message={"assignment_id": "x1"})
        assert received.wait(20), "the node's worker never got the message"
    assert seen == [{"assignment_id": "x1"}]


def test_a_deactivated_node_loses_its_broker_access(enrolled: dict[str, Any]) -> None:
    a = enrolled["a"]
    client = redis.Redis.from_url(a.broker_url)
    assert client.ping()
    services.node_deactivate(node_id=a.node.id, reason="banned for lying")
    assert not Node.objects.get(id=a.node.id).is_active
    with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ConnectionError)):
        redis.Redis.from_url(a.broker_url).ping()
