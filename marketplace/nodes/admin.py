"""Admin for nodes."""

from __future__ import annotations

from django.contrib import admin

from marketplace.nodes.models import Node


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "id", "operator", "is_active", "last_heartbeat", "valid_count", "invalid_count"]
    list_filter = ["is_active"]
    search_fields = ["name", "id", "operator__username", "wallet_address"]
    readonly_fields = ["token_hash", "created_at"]
