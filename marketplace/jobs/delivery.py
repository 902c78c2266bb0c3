"""Leases that a broker fault kept from their node are released, never expired: a broker outage (Redis restarting,
a node's ACL user lost with it, a publish that failed) costs neither the node a mark nor the task an attempt.

Released work is re-leased at once, as when a node hands work back; a node gains nothing by reporting a broker
failure that it does not have, since it could hand the same leases back through the API anyway."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import F, Q
from django.utils import timezone

from marketplace.core.enqueue import schedule_request
from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment, AssignmentState
from marketplace.nodes import broker

logger = logging.getLogger(__name__)

BROKER_DOWN = "not started: the node's worker reported a broken broker connection (no penalty)"


def lease_deliver(*, assignment_id: UUID, node_id: UUID, message: dict[str, Any]) -> bool:
    """Publish a committed lease to the node's queue (after the lease's commit). A publish that fails after
    kombu's own retries releases the lease at once: it was never delivered, so it must not expire against the
    node. Never raises (the caller's transaction has committed)."""
    try:
        broker.assignment_publish(node_id=node_id, message=message)
        return True
    except Exception as exc:  # any broker failure; the lease is the truth, and it is handed back below
        reason = f"not delivered: publishing to the node's queue failed ({exc})"[:500]
        logger.warning("assignment %s for node %s %s", assignment_id, node_id, reason)
    if dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.RELEASED, reason=reason):
        schedule_request()
    return False


def node_leases_release(*, node_id: UUID) -> int:
    """The node's worker cannot consume (its agent says so): hand back its leases that have not started, which it
    cannot receive. Running ones go on: the runner needs no broker, and heartbeats keep their leases."""
    released = 0
    for assignment_id in list(
        Assignment.objects.filter(node_id=node_id, state=AssignmentState.LEASED).values_list("id", flat=True)
    ):
        if dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.RELEASED, reason=BROKER_DOWN):
            released += 1
    if released:
        logger.info("node %s: %d unstarted leases released, its worker cannot reach the broker", node_id, released)
        schedule_request()
    return released


def leases_release_broker_down(*, now: datetime | None = None) -> int:
    """Before leases expire (dispatch.assignments_expire): an unstarted lease past its start window whose node
    reported a broker failure since it was leased, or reports one now, is released instead of expired."""
    now = now or timezone.now()
    excused = Assignment.objects.filter(state=AssignmentState.LEASED, start_by__lt=now).filter(
        Q(node__broker_ok=False) | Q(node__broker_failed_at__gte=F("leased_at"))
    )
    released = 0
    for assignment_id in list(excused.values_list("id", flat=True)):
        if dispatch.assignment_end(assignment_id=assignment_id, to=AssignmentState.RELEASED, reason=BROKER_DOWN):
            released += 1
            logger.info("assignment %s released, not expired: %s", assignment_id, BROKER_DOWN)
    return released
