"""A node is one machine running the node agent, owned by an operator (a user)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Node(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    operator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=64)
    wallet_address = models.CharField(max_length=42, help_text="0x-address payouts go to (lower case).")
    token_hash = models.CharField(max_length=64, unique=True, help_text="sha256 of the node's API secret.")
    capabilities = models.JSONField(default=dict)
    slots = models.PositiveSmallIntegerField(default=1)
    # Leased + running assignments; leasing increments it only while it is below `slots` (conditional UPDATE).
    busy_slots = models.PositiveSmallIntegerField(default=0)
    accepting = models.BooleanField(default=True, help_text="False while the agent is paused or too hot.")
    broker_username = models.CharField(max_length=96, blank=True, default="")
    # What restores the node's Redis ACL user after a broker restart without an ACL file (nodes.broker): Redis takes
    # a password's sha256 (`#<hex>`), so the password itself is never stored; the agent's credentials work again.
    broker_password_sha256 = models.CharField(max_length=64, blank=True, default="")
    # What the agent reports of its worker's broker connection (heartbeat): the scheduler leases nothing to a node
    # whose worker is not consuming, and a lease not started after a reported failure is released, not expired.
    broker_ok = models.BooleanField(default=True)
    broker_error = models.CharField(max_length=500, blank=True, default="")
    broker_failed_at = models.DateTimeField(null=True, blank=True)
    min_price = models.JSONField(default=dict, help_text="{kind: minimum price per replica in base units}.")
    is_active = models.BooleanField(default=True, help_text="Removed or banned nodes are inactive.")
    last_heartbeat = models.DateTimeField(null=True, blank=True, db_index=True)
    # Where the node's requests come from, as the marketplace sees them (enrolment, then every heartbeat): replicas
    # of one task go to nodes on distinct networks (marketplace.nodes.network).
    address = models.GenericIPAddressField(null=True, blank=True)
    valid_count = models.PositiveIntegerField(default=0)
    invalid_count = models.PositiveIntegerField(default=0)
    expired_count = models.PositiveIntegerField(default=0)
    consecutive_valid = models.PositiveIntegerField(default=0)
    # The operator asked (dashboard) for the node's credit to be withdrawn; the next heartbeat tells the agent,
    # which signs the withdrawal with the node's own key.
    withdraw_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["operator", "name"], name="node_name_unique_per_operator")]

    def __str__(self) -> str:
        return f"node {self.name} ({self.id})"

    @property
    def is_online(self) -> bool:
        if self.last_heartbeat is None or not self.is_active:
            return False
        window = timedelta(seconds=settings.HASHWORK["NODE_ONLINE_SECONDS"])
        return timezone.now() - self.last_heartbeat <= window


class NodeReputation(models.Model):
    """Trust a node has earned on one job kind (marketplace.jobs.reputation): a score of accepted results that
    count, decaying with REPUTATION_HALF_LIFE_DAYS from `updated_at`, reset to 0 by a wrong result."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="reputations")
    kind = models.CharField(max_length=32)
    # The score as it stood at `updated_at`; readers decay it to their own time.
    score = models.FloatField(default=0.0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "kind"], name="node_reputation_unique_per_kind")]

    def __str__(self) -> str:
        return f"node {self.node_id} on {self.kind}: {self.score:.2f} at {self.updated_at:%Y-%m-%d %H:%M}"
