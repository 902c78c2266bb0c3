"""Writes for nodes: enrolment, deactivation, broker users, withdrawals (heartbeats: marketplace.jobs.services)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.core import hooks
from marketplace.core.exceptions import ApplicationError, ValidationFailed
from marketplace.core.fields import UINT256_MAX
from marketplace.core.redis_admin import once_per
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
    password, password_sha256 = broker.password_new()
    try:
        with transaction.atomic():
            # The operator's row lock makes two enrolments at once take turns, so both cannot pass the count.
            get_user_model().objects.select_for_update().filter(pk=operator.pk).first()
            _enrolment_rate_check(operator=operator, now=timezone.now())
            node = Node(
                operator=operator,
                address=address_normalize(address),
                name=name,
                wallet_address=wallet_address.lower(),
                token_hash=digest,
                capabilities=capabilities,
                slots=slots,
                min_price=prices,
                broker_password_sha256=password_sha256,
            )
            # Known before the broker user exists, so that broker_users_restore can make it even if this process
            # dies before it does.
            node.broker_username = broker.node_username(node.id)
            node.save(force_insert=True)
    except IntegrityError:
        raise ValidationFailed({"name": [f"You already have a node named {name!r}."]}) from None
    # The broker user is made after the node row commits, outside any transaction (no Redis call under a row
    # lock); if Redis refuses, the node is removed again, so a failed enrolment leaves nothing behind.
    try:
        user = broker.broker_user_create(node_id=node.id, password=password)
    except Exception:
        Node.objects.filter(id=node.id).delete()
        raise
    logger.info("node %s enrolled by operator %s", node.id, operator.pk)
    return Enrolment(node=node, token=token, broker_url=user.url, broker_prefix=user.prefix)


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
    assignments go back to the pool. The ban holds even when Redis cannot delete the broker user now (down,
    restarting): broker_users_restore deletes the user of every inactive node until it is gone."""
    with transaction.atomic():
        changed = Node.objects.filter(id=node_id, is_active=True).update(is_active=False, accepting=False)
        node = Node.objects.filter(id=node_id).first()
        if not changed or node is None:
            return False
        hooks.node_deactivated.send(node.id)
    # Dropping the broker user closes the node's connections at once; after the commit, like every Redis call.
    try:
        broker.broker_user_delete(username=node.broker_username or broker.node_username(node.id))
    except redis.RedisError as exc:
        logger.warning("node %s deactivated; its broker user is deleted later (broker_users_restore): %s", node_id, exc)
    logger.info("node %s deactivated: %s", node_id, reason)
    return True


@dataclass(frozen=True)
class BrokerUsersRestored:
    """What broker_users_restore did: users made again, deleted (of inactive or deleted nodes), hashes read back
    from Redis (nodes enrolled before they were stored), and active nodes whose user is lost for good."""

    restored: list[UUID]
    deleted: list[str]
    adopted: list[UUID]
    unrecoverable: list[UUID]


def node_broker_restore(*, node_id: UUID) -> bool:
    """Make an active node's broker user again from its stored hash: its agent reported that its worker cannot log
    in (a Redis restart lost the user). False for an inactive node or one without a stored hash. A ban that
    commits meanwhile deletes the user after its commit; the check after SETUSER catches the other order."""
    digest = Node.objects.filter(id=node_id, is_active=True).values_list("broker_password_sha256", flat=True).first()
    if not digest:
        return False
    broker.broker_user_restore(node_id=node_id, password_sha256=digest)
    if not Node.objects.filter(id=node_id, is_active=True).exists():
        broker.broker_user_delete(username=broker.node_username(node_id))
        return False
    logger.info("broker user of node %s restored", node_id)
    return True


def broker_users_restore(*, full: bool = False) -> BrokerUsersRestored:
    """Make Redis hold exactly the ACL users of the active nodes: make each missing one again from its stored hash
    (every one when `full`, which also brings them all to the current node_acl_rules), delete those of inactive
    or deleted nodes (a ban whose deletion failed), and load the node scripts first if Redis lost them.
    Idempotent, and cheap when nothing is missing (ACL USERS, SCRIPT EXISTS, one query): a worker runs it when it
    starts, beat every few seconds. A node enrolled before hashes were stored gets its hash read back from Redis
    while its user exists; one whose user is already gone cannot be made again (logged: it must enrol again)."""
    # Redis first: a user that an enrolment makes after this read has a committed row before it (node_enroll).
    present = broker.broker_users_present()
    if not broker.broker_scripts_present():
        broker.broker_scripts_load()
    active = {
        broker.node_username(node_id): (node_id, digest)
        for node_id, digest in Node.objects.filter(is_active=True).values_list("id", "broker_password_sha256")
    }
    missing: list[tuple[UUID, str]] = []
    adopted: list[UUID] = []
    unrecoverable: list[UUID] = []
    for username, (node_id, digest) in active.items():
        if not digest:
            found = broker.broker_user_hash(username=username) if username in present else None
            if found is None:
                unrecoverable.append(node_id)
                if once_per(f"broker-unrecoverable:{node_id}", 3600):
                    logger.error("node %s has no broker user nor a stored hash to make one: enrol it again", node_id)
                continue
            Node.objects.filter(id=node_id, broker_password_sha256="").update(broker_password_sha256=found)
            adopted.append(node_id)
            digest = found
        if full or username not in present:
            missing.append((node_id, digest))
    if missing:
        broker.broker_users_make(missing)
    restored = [node_id for node_id, _ in missing]
    deleted = sorted(present - active.keys())
    # Banned while we restored: the ban's own deletion may have run before our SETUSER (node_broker_restore's rule).
    for node_id in Node.objects.filter(id__in=restored, is_active=False).values_list("id", flat=True):
        deleted.append(broker.node_username(node_id))
    for username in deleted:
        broker.broker_user_delete(username=username)
    if restored and not full:
        logger.warning("broker users of %d active nodes were missing (a Redis restart?): restored", len(restored))
    return BrokerUsersRestored(restored=restored, deleted=deleted, adopted=adopted, unrecoverable=unrecoverable)


def node_withdraw_request(*, node: Node) -> None:
    """Ask the node to withdraw its escrow credit: its agent does it at its next heartbeat, with its own key."""
    Node.objects.filter(id=node.id).update(withdraw_requested_at=timezone.now())
    logger.info("withdrawal requested for node %s", node.id)
