"""Admin for nodes; banning goes through the service, so the node's broker user is deleted too.

The node list is the marketplace operator's view of every node's worker. Flower shows the marketplace's own
workers only: node workers send no Celery events, since events travel on channels that every node would share and
each node's ACL confines it to its own key prefix. Each agent reports instead, over HTTP in its heartbeat, whether
its worker consumes its queue (`broker_ok`, with the error when not), and this list shows that for all of them.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from marketplace.nodes.models import Node
from marketplace.nodes.services import node_deactivate


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "name",
        "id",
        "operator",
        "is_active",
        "online",
        "worker",
        "accepting",
        "busy",
        "last_heartbeat",
        "valid_count",
        "invalid_count",
    ]
    list_filter = ["is_active", "accepting", "broker_ok"]
    search_fields = ["name", "id", "operator__username", "wallet_address"]
    readonly_fields = ["token_hash", "broker_username", "busy_slots", "created_at"]
    actions = ["ban"]

    @admin.display(boolean=True, description="online")
    def online(self, node: Node) -> bool:
        since = timezone.now() - timedelta(seconds=settings.HASHWORK["NODE_ONLINE_SECONDS"])
        return bool(node.is_active and node.last_heartbeat and node.last_heartbeat >= since)

    @admin.display(description="worker", ordering="broker_ok")
    def worker(self, node: Node) -> str:
        """Whether the node's worker consumes its queue, as its agent last reported (the scheduler leases nothing
        to one that does not)."""
        if node.broker_ok:
            return "consuming"
        return f"not consuming: {node.broker_error or 'no reason given'}"

    @admin.display(description="busy")
    def busy(self, node: Node) -> str:
        return f"{node.busy_slots}/{node.slots}"

    @admin.action(description="Ban: revoke credentials and broker access, hand back open work")
    def ban(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        banned = sum(node_deactivate(node_id=node.id, reason=f"banned by {request.user}") for node in queryset)
        self.message_user(request, f"Banned {banned} node(s).", messages.SUCCESS)
