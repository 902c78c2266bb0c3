"""Writes for nodes: enrolment, heartbeats, deactivation."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.core.exceptions import ValidationFailed
from marketplace.core.fields import UINT256_MAX
from marketplace.jobs import dispatch, kinds
from marketplace.jobs.services import schedule_request
from marketplace.nodes import broker
from marketplace.nodes.authentication import token_new
from marketplace.nodes.models import Node

logger = logging.getLogger(__name__)

WALLET_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_SLOTS = 64


@dataclass(frozen=True)
class Enrolment:
    node: Node
    token: str
    broker_url: str | None
    broker_prefix: str | None


def _min_price_clean(min_price: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, list[str]] = {}
    clean: dict[str, str] = {}
    for kind, amount in min_price.items():
        if kind not in kinds.names():
            fields[f"min_price.{kind}"] = [f"Unknown job kind; choose among {', '.join(kinds.names())}."]
            continue
        if isinstance(amount, bool) or not isinstance(amount, int | str) or not str(amount).isdigit():
            fields[f"min_price.{kind}"] = ["Must be a whole number of token base units."]
            continue
        if int(amount) > UINT256_MAX:
            fields[f"min_price.{kind}"] = ["Must fit in 256 bits."]
            continue
        clean[kind] = str(int(amount))
    if fields:
        raise ValidationFailed(fields)
    return clean


@transaction.atomic
def node_enroll(
    *,
    operator: AbstractBaseUser,
    name: str,
    wallet_address: str,
    capabilities: dict[str, Any],
    slots: int,
    min_price: dict[str, Any],
) -> Enrolment:
    """Register a node for `operator`; the returned token is shown once and stored only as a hash."""
    if not WALLET_RE.match(wallet_address):
        raise ValidationFailed({"wallet_address": ["Must be a 0x-prefixed 20-byte hex address."]})
    if not 1 <= slots <= MAX_SLOTS:
        raise ValidationFailed({"slots": [f"Must be between 1 and {MAX_SLOTS}."]})
    prices = _min_price_clean(min_price)
    token, digest = token_new()
    try:
        with transaction.atomic():
            node = Node.objects.create(
                operator=operator,
                name=name,
                wallet_address=wallet_address.lower(),
                token_hash=digest,
                capabilities=capabilities,
                slots=slots,
                min_price=prices,
            )
    except IntegrityError:
        raise ValidationFailed({"name": [f"You already have a node named {name!r}."]}) from None
    username, broker_url, prefix = broker.broker_user_create(node_id=node.id)
    Node.objects.filter(id=node.id).update(broker_username=username)
    node.broker_username = username
    logger.info("node %s enrolled by operator %s", node.id, operator.pk)
    return Enrolment(node=node, token=token, broker_url=broker_url, broker_prefix=prefix)


@dataclass(frozen=True)
class Heartbeat:
    node: Node
    revoked: list[UUID]
    withdraw: bool = False


def node_heartbeat(
    *,
    node: Node,
    capabilities: dict[str, Any] | None,
    free_slots: int,
    accepting: bool = True,
    running: list[UUID] | None = None,
    progress: dict[UUID, tuple[int, int]] | None = None,
) -> Heartbeat:
    """Record that `node` is alive, with what it reports; extend the leases it is running. The reply names
    the reported assignments it no longer holds (cancelled, expired), so the agent can stop them. `progress`
    maps running assignments to (done, total) as their runners report it."""
    if not 0 <= free_slots <= node.slots:
        raise ValidationFailed({"free_slots": [f"Must be between 0 and the node's {node.slots} slots."]})
    for assignment_id, (done, total) in (progress or {}).items():
        if assignment_id not in (running or []):
            raise ValidationFailed({"progress": [f"Assignment {assignment_id} has progress but is not in running."]})
        if total < 1 or not 0 <= done <= total:
            raise ValidationFailed({"progress": [f"Assignment {assignment_id}: need 0 ≤ done ≤ total and total ≥ 1."]})
    now = timezone.now()
    updates: dict[str, Any] = {"last_heartbeat": now, "accepting": accepting}
    if capabilities is not None:
        updates["capabilities"] = capabilities
    Node.objects.filter(id=node.id).update(**updates)
    revoked = dispatch.leases_extend(node=node, assignment_ids=running or [], progress=progress)
    # Told once: the request is cleared by the heartbeat that carries it.
    withdraw = bool(
        Node.objects.filter(id=node.id, withdraw_requested_at__isnull=False).update(withdraw_requested_at=None)
    )
    node.refresh_from_db()
    if accepting and free_slots > 0:
        transaction.on_commit(schedule_request)
    return Heartbeat(node=node, revoked=revoked, withdraw=withdraw)


def node_deactivate(*, node_id: Any, reason: str) -> bool:
    """Remove or ban a node: it can no longer authenticate, reach the broker or be leased work; its open
    assignments go back to the pool."""
    changed = Node.objects.filter(id=node_id, is_active=True).update(is_active=False, accepting=False)
    node = Node.objects.filter(id=node_id).first()
    if changed and node is not None:
        broker.broker_user_delete(username=node.broker_username)
        dispatch.node_release(node=node, accepting=False)
        transaction.on_commit(schedule_request)
        logger.info("node %s deactivated: %s", node_id, reason)
    return bool(changed)
