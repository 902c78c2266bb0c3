"""Ending leases (expired, released, failed, judged) and what follows from a lost attempt; leasing itself is in
`leasing` (re-exported here: `schedule`, `assignment_lease`)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.core.enqueue import schedule_request
from marketplace.jobs import delivery, diversity, kinds, policy
from marketplace.jobs.leases import lease_bound, lease_windows
from marketplace.jobs.leasing import (
    LEASABLE_TASK_STATES,
    LeaseOutcome,
    assignment_lease,
    assignment_message,
    leases_grant,
    schedule,
)
from marketplace.jobs.models import (
    ASSIGNMENT_ATTEMPT_LOST,
    ASSIGNMENT_LIVE,
    ASSIGNMENT_OPEN,
    ASSIGNMENT_TRANSITIONS,
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

__all__ = [
    "LEASABLE_TASK_STATES",
    "LeaseOutcome",
    "assignment_end",
    "assignment_lease",
    "assignment_message",
    "leases_grant",
    "schedule",
]

logger = logging.getLogger(__name__)


def assignment_end(*, assignment_id: UUID, to: str, reason: str = "", **fields: Any) -> bool:
    """Move an assignment to a later state and settle the counters it held; False if it had moved already."""
    now = timezone.now()
    with transaction.atomic():
        current = Assignment.objects.filter(id=assignment_id).values("state", "task_id", "node_id").first()
        if current is None or current["state"] not in ASSIGNMENT_TRANSITIONS[to]:
            return False
        # Lock order (leasing's): the task, then the assignment and the node. A lease batch holds its tasks' locks
        # while it takes its nodes'; taking this node first would let the two wait on each other.
        Task.objects.select_for_update().filter(id=current["task_id"]).values_list("id", flat=True).first()
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
    if policy.node_blocked_after(block.failures) and not block.blocked:
        JobNodeBlock.objects.filter(id=block.id).update(blocked=True)
        logger.warning("node %s blocked from job %s after %d failures", node_id, task.job_id, block.failures)
    if task.state not in LEASABLE_TASK_STATES:
        return
    # Losses count once per operator: one operator's throwaway nodes, however many, cannot fail a task (and its
    # job); the job's deadline still ends a task that nobody finishes.
    operators, needed = diversity.lost_operators(task_id), settings.HASHWORK["TASK_FAIL_OPERATORS"]
    last = reason or "no reason"
    if diversity.operators_fail_task(operators):
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
    if not assignment_ids:
        return []  # an idle node's heartbeat: nothing to extend (and no query to build)
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
