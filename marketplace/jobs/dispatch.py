"""Leasing task replicas to nodes and ending leases. Every claim is a conditional UPDATE on a counter
(a node's busy slots, a task's live replicas), so concurrent schedulers can never over-lease."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.core.enqueue import schedule_request
from marketplace.jobs import delivery, diversity, kinds, reputation
from marketplace.jobs.leases import lease_bound, lease_windows
from marketplace.jobs.matching import capabilities_satisfy, price_ok
from marketplace.jobs.models import (
    ASSIGNMENT_ATTEMPT_LOST,
    ASSIGNMENT_LIVE,
    ASSIGNMENT_OPEN,
    ASSIGNMENT_RETAKEABLE,
    ASSIGNMENT_TRANSITIONS,
    TASK_TRANSITIONS,
    Assignment,
    AssignmentState,
    Job,
    JobNodeBlock,
    JobState,
    Task,
    TaskState,
)
from marketplace.jobs.transitions import job_transition, task_transition, tasks_transition
from marketplace.nodes.models import Node
from marketplace.nodes.selectors import nodes_leasable

logger = logging.getLogger(__name__)

# Leasing moves a task pending → running, or leaves a running one running.
LEASABLE_TASK_STATES = TASK_TRANSITIONS[TaskState.RUNNING] | {TaskState.RUNNING}


@dataclass(frozen=True)
class LeaseOutcome:
    """A new assignment; or none, with `node_full` when the node has no room (or, on probation, holds all it may)
    and `refused` naming the rule when this node may not hold a replica of this task."""

    assignment: Assignment | None
    node_full: bool = False
    refused: str = ""


class _NoLease(Exception):
    """Roll back a half-made claim."""

    def __init__(self, outcome: LeaseOutcome | None = None) -> None:
        super().__init__()
        self.outcome = outcome or LeaseOutcome(None)


def assignment_lease(*, task: Task, node: Node, now: datetime | None = None) -> LeaseOutcome:
    """Claim one replica of `task` for `node`, or nothing if either has no room left, the node is on probation and
    holds all it may, or another replica of the task is its operator's or on its network (see `diversity`)."""
    now = now or timezone.now()
    job = task.job
    start, lease = lease_windows(job.kind)
    try:
        with transaction.atomic():
            # Lock order everywhere: node, then task.
            if not Node.objects.filter(
                id=node.id, is_active=True, accepting=True, broker_ok=True, busy_slots__lt=F("slots")
            ).update(busy_slots=F("busy_slots") + 1):
                return LeaseOutcome(None, node_full=True)
            # Read under the node's row lock: what it holds and where it is cannot change until we commit.
            fresh = Node.objects.only("id", "operator_id", "address", "valid_count").get(id=node.id)
            if diversity.probation_full(fresh):
                raise _NoLease(LeaseOutcome(None, node_full=True))
            if not Task.objects.filter(
                id=task.id, state__in=LEASABLE_TASK_STATES, live_replicas__lt=F("replicas_wanted")
            ).update(live_replicas=F("live_replicas") + 1, state=TaskState.RUNNING, updated_at=now):
                raise _NoLease
            if not Job.objects.filter(id=job.id, state=JobState.RUNNING).exists():
                raise _NoLease
            # Under the task's row lock (the UPDATE above): a concurrent lease of this task waits for our commit and
            # then sees our replica, so two nodes of one operator or network cannot both pass.
            why = diversity.conflict(diversity.holder_of(fresh), diversity.holders([task.id]).get(task.id, []))
            if why:
                logger.info("task %s of job %s not leased to node %s: %s", task.index, job.id, node.id, why)
                raise _NoLease(LeaseOutcome(None, refused=why))
            # One task of a group (a training round) per node. The node's row is locked by the UPDATE above,
            # so two schedulers cannot both give this node a task of the group.
            if (
                task.group is not None
                and Assignment.objects.filter(
                    node=node, task__job_id=job.id, task__group=task.group, state__in=ASSIGNMENT_LIVE
                ).exists()
            ):
                raise _NoLease
            attempt = Assignment.objects.filter(task_id=task.id).count() + 1
            try:
                with transaction.atomic():
                    assignment = Assignment.objects.create(
                        task=task,
                        node=node,
                        attempt=attempt,
                        start_by=now + timedelta(seconds=start),
                        lease_expires_at=now + timedelta(seconds=lease),
                    )
            except IntegrityError:
                # This node already has a replica of this task that counts: replicas must be on different nodes.
                raise _NoLease from None
            reputation.spot_check_maybe(task=task, job=job, node=node)
            message = assignment_message(assignment=assignment, task=task, job=job)
            # A publish that fails releases the lease at once: it must not expire against the node (jobs.delivery).
            transaction.on_commit(
                lambda: delivery.lease_deliver(assignment_id=assignment.id, node_id=node.id, message=message),
                robust=True,
            )
    except _NoLease as refused:
        return refused.outcome
    logger.info("assignment %s: task %s of job %s leased to node %s", assignment.id, task.index, job.id, node.id)
    return LeaseOutcome(assignment)


def assignment_message(*, assignment: Assignment, task: Task, job: Job) -> dict[str, Any]:
    """The wire format the node agent receives: protocol.AssignmentMessage as JSON."""
    from protocol import AssignmentMessage, InputFile

    return AssignmentMessage(
        assignment_id=str(assignment.id),
        job_id=str(job.id),
        task_index=task.index,
        kind=job.kind,
        payload=task.payload,
        # Files the runner needs (a render job's glTF assets, a training round's weights and shard), checked by
        # their sha256 after download.
        input_urls=[InputFile.from_json(item) for item in _inputs(assignment=assignment, task=task, job=job)],
        time_limit_seconds=kinds.get(job.kind).time_limit_seconds,
        gpus=_gpus_wanted(task.requirements),
        start_by=assignment.start_by,
        lease_expires_at=assignment.lease_expires_at,
    ).to_json()


def _gpus_wanted(requirements: Any) -> int:
    """How many GPUs a task's requirements ask for (0 when they say nothing, or nothing that is a count)."""
    wanted = requirements.get("gpus", 0) if isinstance(requirements, dict) else 0
    return wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted <= 64 else 0


def _inputs(*, assignment: Assignment, task: Task, job: Job) -> list[dict[str, Any]]:
    return kinds.get(job.kind).inputs(assignment, task)


def schedule(*, limit: int = 1000) -> list[UUID]:
    """Lease pending replicas to online nodes with room, the right capabilities and an acceptable price, each
    replica of a task to another operator and network, and little to nodes on probation; each kind's work to the
    nodes with the most reputation on it first."""
    nodes = list(nodes_leasable().filter(accepting=True, busy_slots__lt=F("slots")))
    if not nodes:
        return []
    tasks = list(
        Task.objects.filter(
            job__state=JobState.RUNNING,
            state__in=LEASABLE_TASK_STATES,
            live_replicas__lt=F("replicas_wanted"),
        )
        .select_related("job")
        .order_by("job__created_at", "index")[:limit]
    )
    if not tasks:
        return []
    task_ids = [t.id for t in tasks]
    orders = reputation.node_orders(nodes, {t.job.kind for t in tasks})
    # One replica per node and task that counts (not expired or handed back); a node that lost the task goes last.
    replicas = Assignment.objects.filter(task_id__in=task_ids).values_list("task_id", "node_id", "state")
    taken = {(t, n) for t, n, state in replicas if state not in ASSIGNMENT_RETAKEABLE}
    lost = {(t, n) for t, n, state in replicas if state in ASSIGNMENT_RETAKEABLE}
    held = diversity.holders(task_ids)
    blocks = JobNodeBlock.objects.filter(job_id__in={t.job_id for t in tasks}, blocked=True)
    blocked = set(blocks.values_list("job_id", "node_id"))
    room = {n.id: n.slots - n.busy_slots for n in nodes}
    for node_id, allowed in diversity.probation_room(nodes).items():
        room[node_id] = min(room[node_id], allowed)
    whose = {n.id: diversity.holder_of(n) for n in nodes}
    leased: list[UUID] = []
    for task in tasks:
        wanted = task.replicas_wanted - task.live_replicas
        for node in sorted(orders[task.job.kind], key=lambda n: (task.id, n.id) in lost):
            if wanted <= 0:
                break
            if room[node.id] <= 0 or (task.id, node.id) in taken or (task.job_id, node.id) in blocked:
                continue
            if not price_ok(task.job, node) or not capabilities_satisfy(task.requirements, node.capabilities):
                continue
            why = diversity.conflict(whose[node.id], held[task.id])
            if why:
                logger.debug("task %s of job %s skips node %s: %s", task.index, task.job_id, node.id, why)
                continue
            outcome = assignment_lease(task=task, node=node)
            if outcome.node_full:
                room[node.id] = 0
            elif outcome.assignment is not None:
                room[node.id] -= 1
                wanted -= 1
                taken.add((task.id, node.id))
                held[task.id].append(whose[node.id])
                leased.append(outcome.assignment.id)
            elif not outcome.refused:
                break  # the task filled up under us
        if not any(r > 0 for r in room.values()):
            break
    return leased


def assignment_end(*, assignment_id: UUID, to: str, reason: str = "", **fields: Any) -> bool:
    """Move an assignment to a later state and settle the counters it held; False if it had moved already."""
    now = timezone.now()
    with transaction.atomic():
        current = Assignment.objects.filter(id=assignment_id).values("state", "task_id", "node_id").first()
        if current is None or current["state"] not in ASSIGNMENT_TRANSITIONS[to]:
            return False
        updates: dict[str, Any] = {"state": to, **fields}
        if reason:
            updates["state_reason"] = reason
        if to != AssignmentState.SUBMITTED:
            updates.setdefault("finished_at", now)
        if not Assignment.objects.filter(id=assignment_id, state=current["state"]).update(**updates):
            return False  # someone else moved it first; they settle the counters
        node_id, task_id = current["node_id"], current["task_id"]
        if current["state"] in ASSIGNMENT_OPEN:
            Node.objects.filter(id=node_id, busy_slots__gt=0).update(busy_slots=F("busy_slots") - 1)
        if to not in ASSIGNMENT_LIVE:
            Task.objects.filter(id=task_id, live_replicas__gt=0).update(live_replicas=F("live_replicas") - 1)
        if to in ASSIGNMENT_ATTEMPT_LOST or to == AssignmentState.RELEASED:
            _spot_check_undo(task_id=task_id)
        if to in ASSIGNMENT_ATTEMPT_LOST:
            _attempt_lost(task_id=task_id, node_id=node_id, expired=to == AssignmentState.EXPIRED, reason=reason)
    return True


def _spot_check_undo(*, task_id: UUID) -> None:
    """A spot-checked task (a trusted node's sole replica) whose replica was handed back or lost is replicated in
    full again: the next node to take it may be anyone, and must not inherit the trusted node's weaker check."""
    replication = Job.objects.filter(tasks__id=task_id).values_list("replication", flat=True).first()
    if replication and Task.objects.filter(id=task_id, spot_check=True).update(
        spot_check=False, replicas_wanted=replication
    ):
        logger.info("task %s: its spot-checked replica ended; back to %d replicas", task_id, replication)


def _attempt_lost(*, task_id: UUID, node_id: UUID, expired: bool, reason: str) -> None:
    node_updates: dict[str, Any] = {"consecutive_valid": 0}
    if expired:
        node_updates["expired_count"] = F("expired_count") + 1
    Node.objects.filter(id=node_id).update(**node_updates)
    Task.objects.filter(id=task_id).update(lost_attempts=F("lost_attempts") + 1)
    task = Task.objects.select_related("job").get(id=task_id)
    block, _ = JobNodeBlock.objects.get_or_create(job_id=task.job_id, node_id=node_id)
    JobNodeBlock.objects.filter(id=block.id).update(failures=F("failures") + 1)
    block.refresh_from_db()
    if block.failures >= settings.HASHWORK["JOB_NODE_MAX_FAILURES"] and not block.blocked:
        JobNodeBlock.objects.filter(id=block.id).update(blocked=True)
        logger.warning("node %s blocked from job %s after %d failures", node_id, task.job_id, block.failures)
    if task.state not in LEASABLE_TASK_STATES:
        return
    # Losses count once per operator: one operator's throwaway nodes, however many, cannot fail a task (and its
    # job); the job's deadline still ends a task that nobody finishes.
    operators, needed = diversity.lost_operators(task_id), settings.HASHWORK["TASK_FAIL_OPERATORS"]
    last = reason or "no reason"
    if operators >= needed:
        task_fail(
            task=task,
            reason=f"{task.lost_attempts} attempts expired or failed, on nodes of {operators} distinct operators "
            f"(TASK_FAIL_OPERATORS={needed}); last: {last}",
        )
    else:
        logger.info(
            "task %s of job %s lost attempt %d (node %s: %s); nodes of %d of the %d distinct operators that fail it",
            task.index, task.job_id, task.lost_attempts, node_id, last, operators, needed,
        )  # fmt: skip


def task_fail(*, task: Task, reason: str) -> None:
    """A task that cannot be done fails its job: nothing more of the job is leased."""
    if task_transition(task_id=task.id, to=TaskState.FAILED, reason=reason):
        logger.warning("task %s of job %s failed: %s", task.index, task.job_id, reason)
        job_reason = f"task {task.index} failed: {reason}"
        if job_transition(job_id=task.job_id, to=JobState.FAILED, reason=job_reason, strict=False):
            work_stop(job_id=task.job_id, reason="job failed")


def work_stop(*, job_id: UUID, reason: str, group: int | None = None) -> None:
    """Cancel a job's unfinished tasks (or one group's: a closed training round) and revoke their open
    assignments: agents get 409 at start, and a heartbeat tells a running one to stop."""
    tasks = Task.objects.filter(job_id=job_id)
    if group is not None:
        tasks = tasks.filter(group=group)
    tasks_transition(tasks=tasks, to=TaskState.CANCELLED, reason=reason)
    for assignment_id in list(
        Assignment.objects.filter(task__in=tasks, state__in=ASSIGNMENT_OPEN).values_list("id", flat=True)
    ):
        assignment_end(assignment_id=assignment_id, to=AssignmentState.CANCELLED, reason=reason)
    if group is None:
        # The job stopped and is never merged: free what verifying its results left (a render's unpacked chunks).
        transaction.on_commit(lambda: _results_discard(job_id), robust=True)


def _results_discard(job_id: UUID) -> None:
    from marketplace.jobs.services.outputs import job_results_discard

    job = Job.objects.filter(id=job_id).first()
    if job is not None:
        job_results_discard(job=job)


def assignments_expire(*, now: datetime | None = None) -> int:
    """Expire leases not started in their window or not submitted in time; returns how many."""
    now = now or timezone.now()
    delivery.leases_release_broker_down(now=now)  # a broker outage is no one's fault: released, not expired
    overdue = Assignment.objects.filter(
        Q(state=AssignmentState.LEASED, start_by__lt=now) | Q(state__in=ASSIGNMENT_OPEN, lease_expires_at__lt=now)
    ).values_list("id", "state")
    expired = 0
    for assignment_id, state in list(overdue):
        why = "not started within its start window" if state == AssignmentState.LEASED else "lease ran out"
        if assignment_end(assignment_id=assignment_id, to=AssignmentState.EXPIRED, reason=why):
            expired += 1
            logger.info("assignment %s expired: %s", assignment_id, why)
    return expired


def leases_extend(
    *, node: Node, assignment_ids: list[UUID], progress: dict[UUID, tuple[int, int]] | None = None
) -> list[UUID]:
    """Heartbeat: extend the running leases the node reports, never past `lease_bound`, recording each one's
    progress (done, total) where reported; return the reported ids it no longer holds. An assignment past its
    bound expires here (an attempt lost, like any expired lease) and is named with the others."""
    now = timezone.now()
    progress = progress or {}
    held = Assignment.objects.filter(id__in=assignment_ids, node=node, state=AssignmentState.RUNNING).select_related(
        "task__job"
    )
    alive: set[UUID] = set()
    for assignment in held:
        kind_name = assignment.task.job.kind
        _, lease = lease_windows(kind_name)
        bound = lease_bound(kind_name, assignment.started_at or assignment.leased_at)
        if bound <= now:
            why = f"ran past its {kind_name} time limit of {kinds.get(kind_name).time_limit_seconds} s"
            if assignment_end(assignment_id=assignment.id, to=AssignmentState.EXPIRED, reason=why):
                logger.info("assignment %s of node %s expired: %s", assignment.id, node.id, why)
            continue
        updates: dict[str, Any] = {"lease_expires_at": min(now + timedelta(seconds=lease), bound)}
        if assignment.id in progress:
            updates["progress_done"], updates["progress_total"] = progress[assignment.id]
        Assignment.objects.filter(id=assignment.id, state=AssignmentState.RUNNING).update(**updates)
        alive.add(assignment.id)
    return [a for a in assignment_ids if a not in alive]


def node_release(*, node: Node, accepting: bool) -> int:
    """The node hands back all its open work (shutting down or pausing); it is re-leased at once."""
    Node.objects.filter(id=node.id).update(accepting=accepting)
    released = 0
    for assignment_id in list(
        Assignment.objects.filter(node=node, state__in=ASSIGNMENT_OPEN).values_list("id", flat=True)
    ):
        if assignment_end(assignment_id=assignment_id, to=AssignmentState.RELEASED, reason="handed back by the node"):
            released += 1
    logger.info("node %s handed back %d assignments (accepting=%s)", node.id, released, accepting)
    return released


def node_work_release(node_id: UUID) -> None:
    """The node_deactivated hook's receiver: a removed or banned node's open work goes back to the pool."""
    node = Node.objects.filter(id=node_id).first()
    if node is not None:
        node_release(node=node, accepting=False)
        schedule_request()
