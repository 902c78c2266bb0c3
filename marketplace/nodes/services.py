"""Writes for nodes: enrolment, deactivation, withdrawal requests (heartbeats: marketplace.jobs.services)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.core import hooks
from marketplace.core.exceptions import ApplicationError, ValidationFailed
from marketplace.core.fields import UINT256_MAX
from marketplace.nodes import broker
from marketplace.nodes.authentication import token_new
from marketplace.nodes.models import Node
from marketplace.nodes.network import address_normalize

logger = logging.getLogger(__name__)

WALLET_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_SLOTS = 64
ENROLMENT_WINDOW = timedelta(hours=1)


class EnrolmentRateLimited(ApplicationError):
    """The operator enrolled ENROLMENTS_PER_HOUR nodes in the last hour; extra["retry_after_seconds"] says when
    the next one is allowed."""

    status = 429


@dataclass(frozen=True)
class Enrolment:
    node: Node
    token: str
    broker_url: str | None
    broker_prefix: str | None


def _min_price_clean(min_price: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, list[str]] = {}
    clean: dict[str, str] = {}
    known = hooks.job_kind_names()
    for kind, amount in min_price.items():
        if kind not in known:
            fields[f"min_price.{kind}"] = [f"Unknown job kind; choose among {', '.join(known)}."]
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


def node_enroll(
    *,
    operator: AbstractBaseUser,
    name: str,
    wallet_address: str,
    capabilities: dict[str, Any],
    slots: int,
    min_price: dict[str, Any],
    address: str | None = None,
) -> Enrolment:
    """Register a node for `operator`, enrolling from `address`; the returned token is shown once and stored only
    as a hash. At most ENROLMENTS_PER_HOUR per operator (EnrolmentRateLimited, and nothing is made)."""
    if not WALLET_RE.match(wallet_address):
        raise ValidationFailed({"wallet_address": ["Must be a 0x-prefixed 20-byte hex address."]})
    if not 1 <= slots <= MAX_SLOTS:
        raise ValidationFailed({"slots": [f"Must be between 1 and {MAX_SLOTS}."]})
    prices = _min_price_clean(min_price)
    token, digest = token_new()
    try:
        with transaction.atomic():
            # The operator's row lock makes two enrolments at once take turns, so both cannot pass the count.
            get_user_model().objects.select_for_update().filter(pk=operator.pk).first()
            _enrolment_rate_check(operator=operator, now=timezone.now())
            node = Node.objects.create(
                operator=operator,
                address=address_normalize(address),
                name=name,
                wallet_address=wallet_address.lower(),
                token_hash=digest,
                capabilities=capabilities,
                slots=slots,
                min_price=prices,
            )
    except IntegrityError:
        raise ValidationFailed({"name": [f"You already have a node named {name!r}."]}) from None
    # The broker user is made after the node row commits, outside any transaction (no Redis call under a row
    # lock); if Redis refuses, the node is removed again, so a failed enrolment leaves nothing behind.
    try:
        username, broker_url, prefix = broker.broker_user_create(node_id=node.id)
    except Exception:
        Node.objects.filter(id=node.id).delete()
        raise
    Node.objects.filter(id=node.id).update(broker_username=username)
    node.broker_username = username
    logger.info("node %s enrolled by operator %s", node.id, operator.pk)
    return Enrolment(node=node, token=token, broker_url=broker_url, broker_prefix=prefix)


def _enrolment_rate_check(*, operator: AbstractBaseUser, now: datetime) -> None:
    limit = settings.HASHWORK["ENROLMENTS_PER_HOUR"]
    recent = list(
        Node.objects.filter(operator_id=operator.pk, created_at__gt=now - ENROLMENT_WINDOW)
        .order_by("created_at")
        .values_list("created_at", flat=True)
    )
    if len(recent) < limit:
        return
    # Allowed again once enough of the window's enrolments have aged out of it.
    retry_at = recent[len(recent) - limit] + ENROLMENT_WINDOW
    wait = max(1, math.ceil((retry_at - now).total_seconds()))
    logger.warning(
        "enrolment refused for operator %s: %d nodes in the last hour (limit %d)", operator.pk, len(recent), limit
    )
    raise EnrolmentRateLimited(
        f"Enrolment limit reached: at most {limit} nodes per operator per hour (ENROLMENTS_PER_HOUR). "
        f"Try again in {wait} s, after {retry_at.isoformat(timespec='seconds')}.",
        {"limit": limit, "window_seconds": int(ENROLMENT_WINDOW.total_seconds()), "retry_after_seconds": wait},
    )


def node_address_record(*, node: Node, address: str | None) -> bool:
    """Record where the node's requests now come from (every heartbeat); True when it changed."""
    address = address_normalize(address)
    if address is None or node.address == address:
        return False
    Node.objects.filter(id=node.id).update(address=address)
    logger.info("node %s now reaches the marketplace from %s (was %s)", node.id, address, node.address)
    node.address = address
    return True


def node_deactivate(*, node_id: Any, reason: str) -> bool:
    """Remove or ban a node: it can no longer authenticate, reach the broker or be leased work; its open
    assignments go back to the pool."""
    with transaction.atomic():
        changed = Node.objects.filter(id=node_id, is_active=True).update(is_active=False, accepting=False)
        node = Node.objects.filter(id=node_id).first()
        if not changed or node is None:
            return False
        hooks.node_deactivated.send(node.id)
    # Dropping the broker user closes the node's connections at once; after the commit, like every Redis call.
    broker.broker_user_delete(username=node.broker_username)
    logger.info("node %s deactivated: %s", node_id, reason)
    return True


def node_withdraw_request(*, node: Node) -> None:
    """Ask the node to withdraw its escrow credit: its agent does it at its next heartbeat, with its own key."""
    Node.objects.filter(id=node.id).update(withdraw_requested_at=timezone.now())
    logger.info("withdrawal requested for node %s", node.id)
