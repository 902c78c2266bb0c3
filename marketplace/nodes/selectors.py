"""Reads for nodes."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from marketplace.nodes.models import Node


def nodes_online() -> QuerySet[Node]:
    """Active nodes that heartbeat recently (what the network page counts)."""
    since = timezone.now() - timedelta(seconds=settings.HASHWORK["NODE_ONLINE_SECONDS"])
    return Node.objects.filter(is_active=True, last_heartbeat__gte=since)


def nodes_leasable() -> QuerySet[Node]:
    """Online nodes whose worker is consuming its queue: a node whose agent reports a broken broker connection (a
    Redis restart lost its user, Redis is down) is leased nothing until it recovers, though it is still online."""
    return nodes_online().filter(broker_ok=True)


def node_list_for_operator(*, operator_id: int) -> QuerySet[Node]:
    return Node.objects.filter(operator_id=operator_id)
