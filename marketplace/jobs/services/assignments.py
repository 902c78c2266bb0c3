"""Writes for assignments as node agents report on them: heartbeat, start, result, hand back, fail."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import redis
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from marketplace.core.enqueue import schedule_request
from marketplace.core.exceptions import Conflict, ValidationFailed
from marketplace.core.redis_admin import once_per
from marketplace.jobs import delivery, dispatch, kinds, selectors, signing, verify_batches
from marketplace.jobs.models import Assignment, AssignmentState, Result, Task, TaskState
from marketplace.nodes.models import Node
from marketplace.nodes.services import node_broker_restore
from protocol import BrokerHealth

logger = logging.getLogger(__name__)

# A node whose worker cannot log in asks at every heartbeat; its user is made again at most this often.
BROKER_RESTORE_EVERY_SECONDS = 5

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")


def assignment_start(*, assignment_id: UUID, node: Node) -> Assignment:
    """The node starts work on a leased assignment; Conflict if it was cancelled, expired or started."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    now = timezone.now()
    started = Assignment.objects.filter(
        id=assignment.id,
        node=node,
        state=AssignmentState.LEASED,
        start_by__gte=now,
        lease_expires_at__gte=now,
    ).update(state=AssignmentState.RUNNING, started_at=now)
    assignment.refresh_from_db()
    if not started:
        state = assignment.state
        why = "its start window has passed" if state == AssignmentState.LEASED else f"it is {state}"
        raise Conflict(f"This assignment cannot start: {why}.", {"state": state})
    return assignment


def result_submit(
    *,
    assignment_id: UUID,
    node: Node,
    artifact: UploadedFile,
    sha256: str,
    signature: str,
    metrics: dict[str, Any],
    assignment: Assignment | None = None,
) -> Result:
    """Store a node's result for its running assignment, or for a leased one within its start window (the result
    then starts it too: a short task needs no separate start call). Checks that need no key come first, so bad
    input is refused before anything is written; a repeated identical upload returns the first result.
    `assignment`, when the caller has it, is this node's assignment `assignment_id` as just read."""
    if assignment is None or assignment.id != assignment_id or assignment.node_id != node.id:
        assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    fields: dict[str, list[str]] = {}
    sha256 = sha256.strip().lower()
    if not SHA256_RE.match(sha256):
        fields["sha256"] = ["Must be 64 lower-case hex digits."]
    if not SIGNATURE_RE.match(signature.strip()):
        fields["signature"] = ["Must be a 0x-prefixed 65-byte hex signature."]
    kind_name = assignment.task.job.kind
    limit = settings.HASHWORK["ARTIFACT_LIMITS"].get(kind_name) or kinds.get(kind_name).artifact_max_bytes
    if artifact.size is None or artifact.size > limit:
        fields["artifact"] = [f"Is {artifact.size} bytes; {assignment.task.job.kind} results are at most {limit}."]
    if fields:
        raise ValidationFailed(fields)
    digest = hashlib.sha256()
    for chunk in artifact.chunks():
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise ValidationFailed({"sha256": ["Does not match the uploaded artifact's bytes."]})
    signer = signing.result_signer(assignment_id=assignment.id, sha256=sha256, signature=signature.strip())
    if signer is None or signer.lower() != node.wallet_address.lower():
        raise ValidationFailed(
            {"signature": ["Is not the node wallet's EIP-191 signature of this assignment id and sha256."]}
        )
    existing = Result.objects.filter(assignment=assignment).first()
    if existing is not None:
        if existing.sha256 == sha256:
            return existing
        raise Conflict("A different result was already submitted for this assignment.")
    now = timezone.now()
    if assignment.state not in (AssignmentState.RUNNING, AssignmentState.LEASED):
        raise Conflict(f"This assignment is {assignment.state}; results are taken only while it runs.")
    if assignment.state == AssignmentState.LEASED and assignment.start_by < now:
        raise Conflict("This assignment was not started within its start window; the result is not accepted.")
    if assignment.lease_expires_at < now:
        raise Conflict("The lease on this assignment has expired; the result is not accepted.")
    artifact.seek(0)
    with transaction.atomic():
        # Under the task's lock, which verification holds while it completes the task and stops its surplus
        # replicas: a result for a task that is already done is refused, never accepted or paid.
        task_state = Task.objects.select_for_update().filter(id=assignment.task_id).values_list("state", flat=True)[0]
        if task_state not in (TaskState.PENDING, TaskState.RUNNING):
            raise Conflict(
                f"This assignment's task is {task_state}: the result is not needed and is not paid.",
                {"task_state": task_state},
            )
        if assignment.state == AssignmentState.LEASED and not Assignment.objects.filter(
            id=assignment.id, state=AssignmentState.LEASED, start_by__gte=now
        ).update(state=AssignmentState.RUNNING, started_at=now):
            raise Conflict("This assignment changed state while the result was uploaded.")
        if not dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.SUBMITTED, submitted_at=now):
            raise Conflict("This assignment changed state while the result was uploaded.")
        result = Result(assignment=assignment, sha256=sha256, size=artifact.size, metrics=metrics, signature=signature)
        result.artifact.save(f"{assignment.id}.bin", artifact, save=False)
        result.save()
        verify_batches.verify_request(assignment.task_id)
        schedule_request()
    logger.info("result %s stored for assignment %s of node %s", result.id, assignment.id, node.id)
    return result


def assignment_release(*, assignment_id: UUID, node: Node) -> Assignment:
    """The node hands one assignment back (paused, shutting down): it is re-leased at once, no penalty."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    if not dispatch.assignment_end(
        assignment_id=assignment.id, to=AssignmentState.RELEASED, reason="handed back by the node"
    ):
        assignment.refresh_from_db()
        raise Conflict(f"This assignment is {assignment.state}; only open assignments can be handed back.")
    schedule_request()
    assignment.refresh_from_db()
    return assignment


def assignment_fail(*, assignment_id: UUID, node: Node, reason: str) -> Assignment:
    """The node's runner failed on this assignment: an attempt lost, and a mark against the node on this job."""
    assignment = selectors.assignment_get_for_node(assignment_id=assignment_id, node=node)
    reason = reason.strip()[:500] or "the node reported a failure"
    if not dispatch.assignment_end(assignment_id=assignment.id, to=AssignmentState.FAILED, reason=reason):
        assignment.refresh_from_db()
        raise Conflict(f"This assignment is {assignment.state}; only open assignments can fail.")
    schedule_request()
    assignment.refresh_from_db()
    return assignment


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
    broker: BrokerHealth | None = None,
) -> Heartbeat:
    """Record that `node` is alive, with what it reports; extend the leases it is running. The reply names
    the reported assignments it no longer holds (cancelled, expired), so the agent can stop them. `progress`
    maps running assignments to (done, total) as their runners report it. A `broker` report that is not ok (the
    worker cannot reach Redis) takes the node off the scheduler until one is ok again, hands back its unstarted
    leases without penalty and makes its broker user again (a Redis restart loses them)."""
    if not 0 <= free_slots <= node.slots:
        raise ValidationFailed({"free_slots": [f"Must be between 0 and the node's {node.slots} slots."]})
    for assignment_id, (done, total) in (progress or {}).items():
        if assignment_id not in (running or []):
            raise ValidationFailed({"progress": [f"Assignment {assignment_id} has progress but is not in running."]})
        if total < 1 or not 0 <= done <= total:
            raise ValidationFailed({"progress": [f"Assignment {assignment_id}: need 0 ≤ done ≤ total and total ≥ 1."]})
    now = timezone.now()
    updates: dict[str, Any] = {"accepting": accepting}
    if capabilities is not None:
        updates["capabilities"] = capabilities
    # An agent too old to report its broker is taken as consuming, as before the report existed (and a node whose
    # agent was downgraded is not left off the scheduler for good).
    broker_ok = broker is None or broker.ok
    updates.update(broker_ok=broker_ok, broker_error="" if broker is None or broker.ok else broker.error)
    if not broker_ok:
        updates["broker_failed_at"] = now
    was_broker_ok = node.broker_ok
    if _heartbeat_write_due(node=node, updates=updates, now=now):
        updates["last_heartbeat"] = now
        Node.objects.filter(id=node.id).update(**updates)
        for name, value in updates.items():
            setattr(node, name, value)
    revoked = dispatch.leases_extend(node=node, assignment_ids=running or [], progress=progress)
    if broker is not None and not broker.ok:
        if was_broker_ok:
            logger.warning("node %s: its worker does not consume: %s", node.id, broker.error or "no reason given")
        delivery.node_leases_release(node_id=node.id)
        _broker_restore(node=node)
    # Told once: the request is cleared by the heartbeat that carries it (the row as authentication read it says
    # whether there is one; a request made since is told at the next heartbeat).
    withdraw = node.withdraw_requested_at is not None and bool(
        Node.objects.filter(id=node.id, withdraw_requested_at__isnull=False).update(withdraw_requested_at=None)
    )
    if revoked or withdraw or not broker_ok:
        node.refresh_from_db()
    if accepting and free_slots > 0 and node.broker_ok:
        schedule_request()
    return Heartbeat(node=node, revoked=revoked, withdraw=withdraw)


def _heartbeat_write_due(*, node: Node, updates: dict[str, Any], now: datetime) -> bool:
    """Whether this heartbeat writes the node's row: when it reports something new, or the stored heartbeat is
    HEARTBEAT_WRITE_SECONDS old. A steady node's heartbeat then costs one read (its authentication), not a write:
    what reads `last_heartbeat` (online, leasable) allows NODE_ONLINE_SECONDS, far more than that lag."""
    if any(getattr(node, name) != value for name, value in updates.items()):
        return True
    every = timedelta(seconds=settings.HASHWORK["HEARTBEAT_WRITE_SECONDS"])
    return node.last_heartbeat is None or now - node.last_heartbeat >= every


def _broker_restore(*, node: Node) -> None:
    """Make the node's broker user again: the same stored hash, so the agent's own credentials work again and no
    secret travels. Redis being down is no error of the heartbeat's (beat's broker_users_restore retries)."""
    try:
        if once_per(f"broker-restore:{node.id}", BROKER_RESTORE_EVERY_SECONDS):
            node_broker_restore(node_id=node.id)
    except redis.RedisError as exc:
        logger.warning("node %s: its broker user cannot be made again now: %s", node.id, exc)
