"""A steady node's heartbeat reads its row and writes nothing; news (or a stale stored heartbeat) is written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from marketplace.nodes.models import Node
from marketplace.nodes.selectors import nodes_online

pytestmark = pytest.mark.django_db

CAPS = {"cpu_cores": 4, "ram_mb": 8000}


def _beat(node: Any, **body: Any) -> list[str]:
    """Heartbeat; the SQL that wrote the node's row."""
    with CaptureQueriesContext(connection) as queries:
        response = node.client.post("/api/nodes/heartbeat/", {"free_slots": 0, **body}, format="json")
    assert response.status_code == 200, response.json()
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "nodes_node"')]


def test_a_repeated_heartbeat_with_nothing_new_writes_no_row(node: Any) -> None:
    assert _beat(node, capabilities=CAPS)  # the first heartbeat is news
    first = Node.objects.get(id=node.node.id).last_heartbeat
    assert _beat(node, capabilities=CAPS) == []
    assert _beat(node) == []
    assert Node.objects.get(id=node.node.id).last_heartbeat == first
    assert nodes_online().filter(id=node.node.id).exists()


@pytest.mark.parametrize(
    "news", [{"accepting": False}, {"capabilities": {**CAPS, "cpu_cores": 8}}, {"broker": {"ok": False, "error": "x"}}]
)
def test_a_heartbeat_that_reports_something_new_is_written_at_once(node: Any, news: dict[str, Any]) -> None:
    _beat(node, capabilities=CAPS)
    assert _beat(node, **news)
    stored = Node.objects.get(id=node.node.id)
    if "accepting" in news:
        assert stored.accepting is False
    if "capabilities" in news:
        assert stored.capabilities["cpu_cores"] == 8
    if "broker" in news:
        assert (stored.broker_ok, stored.broker_error) == (False, "x")


def test_a_stored_heartbeat_older_than_the_write_interval_is_refreshed(node: Any, settings: Any) -> None:
    _beat(node, capabilities=CAPS)
    old = timezone.now() - timedelta(seconds=settings.HASHWORK["HEARTBEAT_WRITE_SECONDS"] + 1)
    Node.objects.filter(id=node.node.id).update(last_heartbeat=old)
    assert _beat(node, capabilities=CAPS)
    assert Node.objects.get(id=node.node.id).last_heartbeat > old


def test_an_offline_node_that_heartbeats_is_online_again(node: Any, settings: Any) -> None:
    _beat(node, capabilities=CAPS)
    gone = timezone.now() - timedelta(seconds=settings.HASHWORK["NODE_ONLINE_SECONDS"] + 5)
    Node.objects.filter(id=node.node.id).update(last_heartbeat=gone)
    assert not nodes_online().filter(id=node.node.id).exists()
    _beat(node, capabilities=CAPS)
    assert nodes_online().filter(id=node.node.id).exists()
