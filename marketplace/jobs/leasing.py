"""Leasing task replicas to nodes: the scheduler plans (task, node) pairs without locks, then `leases_grant` claims
a whole batch of them in one short transaction that re-checks every rule under the rows' locks.

Lock order, as everywhere a task and a node are both written (result upload, verification, `assignment_end`): the
tasks, then the nodes, each set in id order. Under the task locks no other lease, upload or verdict can change a
task's replicas until we commit, so the counters, the one-replica-per-node rule and the diversity rule checked here
are binding; under the node locks, its free slots and (on probation) its open work are."""

from __future__ import annotations

import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, F
from django.utils import timezone

from marketplace.jobs import delivery, diversity, kinds, reputation
from marketplace.jobs.leases import lease_windows
from marketplace.jobs.matching import capabilities_satisfy, price_ok
from marketplace.jobs.models import (
    ASSIGNMENT_LIVE,
    ASSIGNMENT_RETAKEABLE,
    TASK_TRANSITIONS,
    Assignment,
    Job,
    JobNodeBlock,
    JobState,
    Task,
    TaskState,
)
from marketplace.nodes.models import Node
from marketplace.nodes.selectors import nodes_leasable

logger = logging.getLogger(__name__)

# Leasing moves a task pending → running, or leaves a running one running.
LEASABLE_TASK_STATES = TASK_TRANSITIONS[TaskState.RUNNING] | {TaskState.RUNNING}

# What the claim reads of a node, under its lock.
_NODE_FIELDS = (
    "id",
    "operator_id",
    "address",
    "valid_count",
    "slots",
    "busy_slots",
    "is_active",
    "accepting",
    "broker_ok",
)

# Pairs claimed per transaction: one commit for many leases, while the locks stay short.
GRANT_BATCH = 200


@dataclass(frozen=True)
class LeaseOutcome:
    """A new assignment; or none, with `node_full` when the node has no room (or, on probation, holds all it may)
    and `refused` naming the rule when this node may not hold a replica of this task."""

    assignment: Assignment | None
    node_full: bool = False
    refused: str = ""


def assignment_lease(*, task: Task, node: Node, now: datetime | None = None) -> LeaseOutcome:
    """Claim one replica of `task` for `node`, or nothing if either has no room left, the node is on probation and
    holds all it may, or another replica of the task is its operator's or on its network (see `diversity`)."""
    spot = frozenset([task.id]) if task.live_replicas == 0 and _spot_check_drawn(task=task, node=node) else frozenset()
    return leases_grant(pairs=[(task, node)], spot_checks=spot, now=now)[0]


def leases_grant(
    *,
    pairs: Sequence[tuple[Task, Node]],
    spot_checks: frozenset[UUID] = frozenset(),
    now: datetime | None = None,
) -> list[LeaseOutcome]:
    """Claim a replica for each (task, node) pair, in order, in one transaction; one outcome per pair. A pair is
    refused, and the others still granted, when its node is gone, paused, full or on probation and holding all it
    may, its task is done, full or its job not running, the node already holds a replica of the task or of the
    task's group, or the diversity rule forbids it. A task in `spot_checks` (drawn by `_spot_check_drawn` when the
    pairs were planned) whose first replica this is keeps only that one, to be spot-checked. Each granted lease is
    published to its node after the commit."""
    if not pairs:
        return []
    now = now or timezone.now()
    try:
        with transaction.atomic():
            outcomes, granted = _grant_locked(pairs, spot_checks, now)
    except IntegrityError:
        # A replica we could not see (the one-replica-per-node constraint): claim the pairs one at a time instead.
        if len(pairs) == 1:
            return [LeaseOutcome(None)]
        return [leases_grant(pairs=[pair], spot_checks=spot_checks, now=now)[0] for pair in pairs]
    if granted:
        transaction.on_commit(lambda: _deliver(granted), robust=True)
    return outcomes


def _grant_locked(
    pairs: Sequence[tuple[Task, Node]], spot_checks: frozenset[UUID], now: datetime
) -> tuple[list[LeaseOutcome], list[tuple[Assignment, dict[str, Any]]]]:
    task_ids = sorted({task.id for task, _ in pairs})
    node_ids = sorted({node.id for _, node in pairs})
    tasks = {
        t.id: t
        for t in Task.objects.select_for_update(of=("self",))
        .select_related("job")
        .filter(id__in=task_ids)
        .order_by("id")
    }
    nodes = {
        n.id: n
        for n in Node.objects.select_for_update()
        .filter(id__in=node_ids)
        .only(
            "id", "operator_id", "address", "valid_count", "slots", "busy_slots", "is_active", "accepting", "broker_ok"
        )
        .order_by("id")
    }
    room = {n.id: n.slots - n.busy_slots if n.is_active and n.accepting and n.broker_ok else 0 for n in nodes.values()}
    for node_id, allowed in diversity.probation_room(nodes.values()).items():
        room[node_id] = min(room[node_id], allowed)
    held = diversity.holders(tasks)
    replicas = Assignment.objects.filter(task_id__in=list(tasks), node_id__in=list(nodes)).values_list(
        "task_id", "node_id", "state"
    )
    taken = {(t, n) for t, n, state in replicas if state not in ASSIGNMENT_RETAKEABLE}
    grouped = [t for t in tasks.values() if t.group is not None]
    in_group: set[tuple[UUID, UUID, int]] = set()
    if grouped:
        in_group = set(
            Assignment.objects.filter(
                node_id__in=list(nodes),
                task__job_id__in={t.job_id for t in grouped},
                task__group__isnull=False,
                state__in=ASSIGNMENT_LIVE,
            ).values_list("node_id", "task__job_id", "task__group")
        )
    attempts = dict(
        Assignment.objects.filter(task_id__in=list(tasks))
        .order_by()
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )
    live = {t.id: t.live_replicas for t in tasks.values()}
    wanted = {t.id: t.replicas_wanted for t in tasks.values()}
    spot_checked: set[UUID] = set()
    outcomes: list[LeaseOutcome] = []
    created: list[tuple[Assignment, Task]] = []
    for planned, planned_node in pairs:
        task, node = tasks.get(planned.id), nodes.get(planned_node.id)
        if node is None or room[node.id] <= 0:
            outcomes.append(LeaseOutcome(None, node_full=True))
            continue
        if task is None or task.state not in LEASABLE_TASK_STATES or task.job.state != JobState.RUNNING:
            outcomes.append(LeaseOutcome(None))
            continue
        if live[task.id] >= wanted[task.id] or (task.id, node.id) in taken:
            outcomes.append(LeaseOutcome(None))
            continue
        why = diversity.conflict(diversity.holder_of(node), held[task.id])
        if why:
            logger.info("task %s of job %s not leased to node %s: %s", task.index, task.job_id, node.id, why)
            outcomes.append(LeaseOutcome(None, refused=why))
            continue
        # One task of a group (a training round) per node.
        if task.group is not None and (node.id, task.job_id, task.group) in in_group:
            outcomes.append(LeaseOutcome(None))
            continue
        attempts[task.id] = attempts.get(task.id, 0) + 1
        start, lease = lease_windows(task.job.kind)
        assignment = Assignment(
            task=task,
            node=node,
            attempt=attempts[task.id],
            start_by=now + timedelta(seconds=start),
            lease_expires_at=now + timedelta(seconds=lease),
        )
        if (
            task.id in spot_checks
            and live[task.id] == 0
            and not task.spot_check
            and task.replicas_wanted == task.job.replication
        ):
            wanted[task.id] = 1
            spot_checked.add(task.id)
        live[task.id] += 1
        room[node.id] -= 1
        taken.add((task.id, node.id))
        held[task.id].append(diversity.holder_of(node))
        if task.group is not None:
            in_group.add((node.id, task.job_id, task.group))
        created.append((assignment, task))
        outcomes.append(LeaseOutcome(assignment))
    if not created:
        return outcomes, []
    Assignment.objects.bulk_create([a for a, _ in created])
    _counters_add(tasks=Counter(t.id for _, t in created), nodes=Counter(a.node_id for a, _ in created), now=now)
    if spot_checked:
        Task.objects.filter(id__in=spot_checked).update(replicas_wanted=1, spot_check=True)
    granted = [(a, assignment_message(assignment=a, task=t, job=t.job)) for a, t in created]
    return outcomes, granted


def _counters_add(*, tasks: Counter[UUID], nodes: Counter[UUID], now: datetime) -> None:
    """The claimed replicas on their tasks' and nodes' counters: one UPDATE per distinct increment."""
    by_count: defaultdict[int, list[UUID]] = defaultdict(list)
    for task_id, count in tasks.items():
        by_count[count].append(task_id)
    for count, ids in by_count.items():
        Task.objects.filter(id__in=ids).update(
            live_replicas=F("live_replicas") + count, state=TaskState.RUNNING, updated_at=now
        )
    by_count = defaultdict(list)
    for node_id, count in nodes.items():
        by_count[count].append(node_id)
    for count, ids in by_count.items():
        Node.objects.filter(id__in=ids).update(busy_slots=F("busy_slots") + count)


def _spot_check_drawn(*, task: Task, node: Node) -> bool:
    """Adaptive replication: the first replica of a task of a spot-checkable kind, on a node trusted on that kind,
    is the only one with probability 1 - REPLICATION_P; the marketplace then spot-checks it."""
    job = task.job
    if (
        task.spot_check
        or task.replicas_wanted != job.replication
        or not reputation.spot_checkable(job.kind, job.replication)
    ):
        return False
    trusted = reputation.trusted(node_id=node.id, kind=job.kind)
    return reputation.single_replica_drawn(trusted=trusted, draw=secrets.SystemRandom().random())


def _deliver(granted: list[tuple[Assignment, dict[str, Any]]]) -> None:
    # A publish that fails releases the lease at once: it must not expire against the node (jobs.delivery).
    for assignment, message in granted:
        delivery.lease_deliver(assignment_id=assignment.id, node_id=assignment.node_id, message=message)
    logger.info(
        "leased %d replicas: %s",
        len(granted),
        ", ".join(f"{a.id} (task {a.task_id} to node {a.node_id})" for a, _ in granted[:20])
        + (" …" if len(granted) > 20 else ""),
    )


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
        input_urls=[InputFile.from_json(item) for item in kinds.get(job.kind).inputs(assignment, task)],
        time_limit_seconds=kinds.get(job.kind).time_limit_seconds,
        gpus=_gpus_wanted(task.requirements),
        start_by=assignment.start_by,
        lease_expires_at=assignment.lease_expires_at,
    ).to_json()


def _gpus_wanted(requirements: Any) -> int:
    """How many GPUs a task's requirements ask for (0 when they say nothing, or nothing that is a count)."""
    wanted = requirements.get("gpus", 0) if isinstance(requirements, dict) else 0
    return wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted <= 64 else 0


def schedule(*, limit: int = 1000) -> list[UUID]:
    """Lease pending replicas to online nodes with room, the right capabilities and an acceptable price, each
    replica of a task to another operator and network, and little to nodes on probation; each kind's work to the
    nodes with the most reputation on it first. Planned without locks, claimed in batches (`leases_grant`)."""
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
    pairs, spot_checks = _plan(tasks, nodes)
    leased: list[UUID] = []
    for start in range(0, len(pairs), GRANT_BATCH):
        batch = pairs[start : start + GRANT_BATCH]
        try:
            outcomes = leases_grant(pairs=batch, spot_checks=spot_checks)
        except OperationalError as exc:
            # A deadlock with a row-locking path that takes its locks in another order: the database broke it by
            # aborting us, nothing was claimed, and the next scheduler run plans again.
            logger.warning(
                "scheduler: a batch of %d leases was rolled back (%s); the next run retries", len(batch), exc
            )
            break
        leased.extend(o.assignment.id for o in outcomes if o.assignment is not None)
    return leased


def _plan(tasks: list[Task], nodes: list[Node]) -> tuple[list[tuple[Task, Node]], frozenset[UUID]]:
    """The (task, node) pairs to claim, from unlocked reads (`leases_grant` re-checks each under its locks), and the
    tasks whose first replica was drawn to be their only one (adaptive replication)."""
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
    pairs: list[tuple[Task, Node]] = []
    spot_checks: set[UUID] = set()
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
            pairs.append((task, node))
            room[node.id] -= 1
            wanted -= 1
            if (
                task.live_replicas == 0
                and wanted == task.replicas_wanted - 1
                and _spot_check_drawn(task=task, node=node)
            ):
                spot_checks.add(task.id)
                wanted = 0
            taken.add((task.id, node.id))
            held[task.id].append(whose[node.id])
        if not any(r > 0 for r in room.values()):
            break
    return pairs, frozenset(spot_checks)
