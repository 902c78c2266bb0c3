"""Admin for nodes; banning goes through the service, so the node's broker user is deleted too."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.nodes.models import Node
from marketplace.nodes.services import node_deactivate


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "name",
        "id",
        "operator",
        "is_active",
        "accepting",
        "last_heartbeat",
        "valid_count",
        "invalid_count",
    ]
    list_filter = ["is_active", "accepting"]
    search_fields = ["name", "id", "operator__username", "wallet_address"]
    readonly_fields = ["token_hash", "broker_username", "busy_slots", "created_at"]
    actions = ["ban"]

    @admin.action(description="Ban: revoke credentials and broker access, hand back open work")
    def ban(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        banned = sum(node_deactivate(node_id=node.id, reason=f"banned by {request.user}") for node in queryset)
        self.message_user(request, f"Banned {banned} node(s).", messages.SUCCESS)
