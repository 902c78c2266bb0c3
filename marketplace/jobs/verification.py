"""Verifying submitted results by replica agreement: accept the majority, reject the odd one out, ask for one
more replica on another node when there is no majority yet; update reputations; complete tasks and jobs.

The slow part (unpacking artifacts, comparing renders, a spot-check re-render) runs with no lock held and ends
in a plan; the plan is then applied in one short transaction that first checks that the replicas it judged are
still the task's replicas, in the same states (otherwise it judges again)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import F

from marketplace.core import hooks
from marketplace.jobs import faults, kinds, policy, reputation
from marketplace.jobs.dispatch import assignment_end, task_fail
from marketplace.jobs.kinds import DrivenKind, ReplicatedKind, SpotCheckedKind
from marketplace.jobs.models import (
    ASSIGNMENT_OPEN,
    Assignment,
    AssignmentState,
    JobNodeBlock,
    Result,
    Task,
    TaskState,
)
from marketplace.jobs.services.jobs import job_complete_if_done
from marketplace.jobs.transitions import task_transition
from marketplace.nodes.models import Node

logger = logging.getLogger(__name__)

# How often a verdict is recomputed when new replicas arrive while it is being made, before leaving the task to
# the verify run that each of those replicas queued.
MAX_ROUNDS = 3

__all__ = ["assignment_accept", "assignment_reject", "job_complete_if_done", "task_verify"]


def assignment_accept(assignment_id: UUID, node_id: UUID, reason: str = "agrees with the quorum") -> None:
    """Accept a replica: the node's counters up, its reputation for the kind up where the result counts
    (`reputation.reputation_credit`), and (through the assignment_accepted hook, in the same transaction) its
    payout: accepted work always has its payout, nothing else does."""
    with transaction.atomic():
        if assignment_end(assignment_id=assignment_id, to=AssignmentState.ACCEPTED, reason=reason):
            # Takes the node's row lock, which serialises the reputation update below.
            Node.objects.filter(id=node_id).update(
                valid_count=F("valid_count") + 1, consecutive_valid=F("consecutive_valid") + 1
            )
            reputation.reputation_credit(assignment_id=assignment_id, node_id=node_id)
            hooks.assignment_accepted.send(assignment_id)


def assignment_reject(assignment_id: UUID, node_id: UUID, reason: str, *, wrong: bool = False) -> None:
    """Reject a replica with its reason: counters down, never paid. A `wrong` result (it disagreed with the
    quorum, failed its spot check or was malformed) also resets the node's reputation for the job's kind to 0 and
    blocks the node from the job (JobNodeBlock.blocked): it gets none of that job's work again. Without `wrong`
    (a late or refused update of a training round) the node keeps both."""
    with transaction.atomic():
        if not assignment_end(assignment_id=assignment_id, to=AssignmentState.REJECTED, reason=reason):
            return
        # The node's row lock first (lock order: node, then its reputation and block rows).
        Node.objects.filter(id=node_id).update(invalid_count=F("invalid_count") + 1, consecutive_valid=0)
        logger.warning("assignment %s of node %s rejected: %s", assignment_id, node_id, reason)
        if not wrong:
            return
        job_id, kind = Assignment.objects.filter(id=assignment_id).values_list("task__job_id", "task__job__kind").get()
        reputation.reputation_reset(node_id=node_id, kind=kind, reason=f"assignment {assignment_id}: {reason}")
        block, _ = JobNodeBlock.objects.get_or_create(job_id=job_id, node_id=node_id)
        if JobNodeBlock.objects.filter(id=block.id, blocked=False).update(blocked=True):
            logger.warning(
                "node %s blocked from job %s: a wrong result (assignment %s)", node_id, job_id, assignment_id
            )


@dataclass
class _Plan:
    """What a verdict does, decided without locks: applied by _apply in one short transaction."""

    accept: list[tuple[str, str]] = field(default_factory=list)
    reject: list[tuple[str, str]] = field(default_factory=list)
    # Replicas nobody will judge (late, or their job stopped with nothing to compare): unpaid, no mark.
    cancel: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    # No majority yet: decide under the lock whether one more replica is leased or the task fails.
    undecided: bool = False
    # A trusted node's spot-checked replica failed: back to full replication on other nodes.
    trust_lost: bool = False


def task_verify(*, task_id: UUID) -> str:
    """Decide what can be decided about a task's submitted replicas; returns the task's state afterwards."""
    kind_name = Task.objects.filter(id=task_id).values_list("job__kind", flat=True).first()
    if kind_name is None:
        logger.warning("task %s vanished before verification", task_id)
        return "missing"
    kind = kinds.get(kind_name)
    if isinstance(kind, DrivenKind):
        return kind.verify(task_id)
    if not isinstance(kind, ReplicatedKind):
        raise TypeError(f"the {kind.name} kind is neither replicated nor driven")
    state = "missing"
    for _ in range(MAX_ROUNDS):
        task = Task.objects.select_related("job").filter(id=task_id).first()
        if task is None:
            logger.warning("task %s vanished before verification", task_id)
            return "missing"
        state = task.state
        results = list(
            Result.objects.filter(
                assignment__task_id=task.id,
                assignment__state__in=[AssignmentState.SUBMITTED, AssignmentState.ACCEPTED],
            ).select_related("assignment")
        )
        seen = {(r.assignment_id, r.assignment.state) for r in results}
        nodes = {str(r.assignment_id): r.assignment.node_id for r in results}
        plan = _judge(task=task, kind=kind, results=results)
        with transaction.atomic():
            locked = Task.objects.select_for_update().filter(id=task.id).values_list("state", flat=True).first()
            now = set(
                Assignment.objects.filter(
                    task_id=task.id, state__in=[AssignmentState.SUBMITTED, AssignmentState.ACCEPTED]
                ).values_list("id", "state")
            )
            if locked != task.state or now != seen:
                continue  # replicas arrived or moved while we judged: judge again with them
            done = _apply(task=task, plan=plan, nodes=nodes, replicas=len(results))
            _discard_on_commit(kind=kind, task=task, plan=plan, results=results)
            return done
    return state


def _discard_on_commit(*, kind: ReplicatedKind[Any], task: Task, plan: _Plan, results: list[Result]) -> None:
    """Once the verdict has committed, free what judging used (a render kind's unpacked chunks) for the replicas it
    rejected or cancelled, and for all of a stopped task's (its job is never merged). The accepted replicas of a
    live task keep theirs until the job's output is built (jobs.services.outputs.job_output_build)."""
    discard = getattr(kind, "result_discard", None)
    if discard is None:
        return
    stopped = task.state in (TaskState.CANCELLED, TaskState.FAILED)
    ended = {a for a, _ in (*plan.reject, *plan.cancel)}
    doomed = [r for r in results if stopped or str(r.assignment_id) in ended]

    def run() -> None:
        for result in doomed:
            try:
                discard(result)
            except OSError:
                logger.exception("could not free the files of result %s (task %s)", result.id, task.id)

    if doomed:
        transaction.on_commit(run)


def _malformed(task: Task, aid: str, what: str, exc: Exception) -> str:
    """The reason a replica is rejected for an exception its data caused while `what`, logged with the ids."""
    logger.warning(
        "task %s of job %s: replica %s is malformed (%s raised %s: %s)",
        task.id,
        task.job_id,
        aid,
        what,
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, ValueError),
    )
    if isinstance(exc, ValueError) and what == "reading it":
        return f"malformed result: {exc}"
    return f"malformed result: {type(exc).__name__} while {what}: {str(exc)[:300]}"


def _judge(*, task: Task, kind: ReplicatedKind[Any], results: list[Result]) -> _Plan:
    """The verdict on a task's replicas, as a plan; slow work (unpacking, comparing, re-rendering) happens here.

    Total: an exception that a replica's data causes while it is read, compared or spot-checked rejects that
    replica as malformed, naming the exception, and the others are judged without it; only the marketplace's own
    trouble (faults.is_ours: its database, disk, re-render, time limit) stops the verdict, to be retried."""
    plan = _Plan()
    values: dict[str, Any] = {}
    states: dict[str, str] = {}
    for result in results:
        aid = str(result.assignment_id)
        if task.state == TaskState.COMPLETED and result.assignment.state != AssignmentState.SUBMITTED:
            continue  # nothing left to decide about an accepted replica of a completed task: not unpacked again
        try:
            values[aid] = kind.result_value(result)
            states[aid] = result.assignment.state
        except Exception as exc:
            if faults.is_ours(exc):
                raise
            plan.reject.append((aid, _malformed(task, aid, "reading it", exc)))
    if task.state == TaskState.COMPLETED:
        # The task completed without these (its surplus replicas are stopped as it completes, and a result for a
        # completed task is refused with 409): neither accepted nor paid, and no mark against their nodes.
        for a in sorted(values):
            if states[a] == AssignmentState.SUBMITTED:
                plan.cancel.append((a, "arrived after its task completed: not accepted, not paid"))
        return plan
    if task.state in (TaskState.CANCELLED, TaskState.FAILED):
        return _judge_stopped(task=task, kind=kind, plan=plan, values=values)
    if task.state != TaskState.RUNNING:
        return plan
    if task.spot_check and isinstance(kind, SpotCheckedKind) and values:
        # The task's one replica (a trusted node's) against the marketplace's own re-render of a random image.
        ok, reason = _spot_check(task=task, kind=kind, values=values)
        assignment_id = next(iter(values))
        if ok:
            plan.accept.append((assignment_id, f"passed its spot check: {reason}"))
            plan.complete = True
        else:
            plan.reject.append((assignment_id, reason))
            plan.trust_lost = True
        return plan
    verdict = _decide(task=task, kind=kind, plan=plan, values=values)
    if verdict.needs_another_replica:
        plan.undecided = True
        return plan
    plan.accept.extend((a, "agrees with the quorum") for a in sorted(verdict.accepted))
    winners = [values[a] for a in sorted(verdict.accepted)]
    for a in sorted(verdict.rejected):
        plan.reject.append((a, _why(kind, "differs from the majority of replicas", winners, values[a])))
    plan.complete = True
    return plan


def _spot_check(*, task: Task, kind: SpotCheckedKind[Any], values: dict[str, Any]) -> tuple[bool, str]:
    """(ok, reason) of the spot check of the task's one replica; an exception its data causes fails it."""
    assignment_id, value = next(iter(values.items()))
    try:
        ok, reason = kind.spot_check(task, value)
    except Exception as exc:
        if faults.is_ours(exc):
            raise
        return False, f"spot check failed: {_malformed(task, assignment_id, 'spot-checking it', exc)}"
    return ok, reason if ok else f"spot check failed: {reason}"


def _decide(*, task: Task, kind: ReplicatedKind[Any], plan: _Plan, values: dict[str, Any]) -> kinds.Verdict:
    """kinds.decide with a total `agree`. When comparing two replicas raises, each is compared with itself: one
    that cannot even be is malformed, rejected and removed from `values`, and the rest are decided again without
    it; a pair that only fails together simply disagrees."""
    broken: dict[str, str] = {}
    sound: set[str] = set()

    def fails_alone(aid: str) -> bool:
        if aid in sound or aid in broken:
            return aid in broken
        try:
            kind.agree(values[aid], values[aid])
        except Exception as exc:
            if faults.is_ours(exc):
                raise
            broken[aid] = _malformed(task, aid, "comparing it", exc)
            return True
        sound.add(aid)
        return False

    def agree(a: str, b: str) -> bool:
        try:
            return bool(kind.agree(values[a], values[b]))
        except Exception as exc:
            if faults.is_ours(exc):
                raise
            # Both are tried (no short circuit): either may be the broken one.
            if not (fails_alone(a) | fails_alone(b)):
                logger.warning("task %s: replicas %s and %s cannot be compared (%r): they disagree", task.id, a, b, exc)
            return False

    while True:
        known = len(broken)
        verdict = kinds.decide({a: a for a in values if a not in broken}, quorum=_quorum(task), agree=agree)
        if len(broken) == known:
            break
    for aid, why in broken.items():
        plan.reject.append((aid, why))
        values.pop(aid)
    return verdict


def _judge_stopped(*, task: Task, kind: ReplicatedKind[Any], plan: _Plan, values: dict[str, Any]) -> _Plan:
    """Replicas submitted before their job was cancelled, failed or expired are judged with what is there:
    verified work is paid (cancelling never takes it for free); a replica nothing can verify any more (no other
    replica to compare it with) is cancelled, unpaid and with no mark against its node."""
    if not values:
        return plan
    if task.spot_check and isinstance(kind, SpotCheckedKind):
        ok, reason = _spot_check(task=task, kind=kind, values=values)
        assignment_id = next(iter(values))
        if ok:
            plan.accept.append((assignment_id, f"passed its spot check: {reason}"))
        else:
            plan.reject.append((assignment_id, reason))
        return plan
    verdict = _decide(task=task, kind=kind, plan=plan, values=values)
    if verdict.needs_another_replica:
        why = f"its job stopped ({task.state}) before another replica could verify it: not paid"
        plan.cancel.extend((a, why) for a in sorted(values))
        return plan
    plan.accept.extend((a, "agrees with the quorum") for a in sorted(verdict.accepted))
    winners = [values[a] for a in sorted(verdict.accepted)]
    for a in sorted(verdict.rejected):
        plan.reject.append((a, _why(kind, "differs from the majority of replicas", winners, values[a])))
    return plan


def _quorum(task: Task) -> int:
    return policy.quorum(task.job.replication)


def _apply(*, task: Task, plan: _Plan, nodes: dict[str, UUID], replicas: int) -> str:
    """Apply a plan inside the caller's transaction (the task row is locked); returns the task's state."""
    for a, why in plan.accept:
        assignment_accept(UUID(a), nodes[a], why)
    for a, why in plan.reject:
        # Every rejection judged here is a wrong result: malformed, outvoted, or a failed spot check.
        assignment_reject(UUID(a), nodes[a], why, wrong=True)
    for a, why in plan.cancel:
        if assignment_end(assignment_id=UUID(a), to=AssignmentState.CANCELLED, reason=why):
            logger.info("assignment %s of task %s cancelled: %s", a, task.id, why)
    if plan.complete:
        if task_transition(task_id=task.id, to=TaskState.COMPLETED):
            # Surplus replicas still leased or running are stopped: the task needs them no more, and their
            # results would be refused (409); their agents hear it at their next heartbeat.
            surplus = Assignment.objects.filter(task_id=task.id, state__in=ASSIGNMENT_OPEN).values_list("id", flat=True)
            for surplus_id in list(surplus):
                assignment_end(
                    assignment_id=surplus_id, to=AssignmentState.CANCELLED, reason="its task completed without it"
                )
            job_id = task.job_id
            transaction.on_commit(lambda: job_complete_if_done(job_id=job_id))
        return TaskState.COMPLETED
    if plan.trust_lost:
        Task.objects.filter(id=task.id).update(replicas_wanted=task.job.replication, spot_check=False)
        return task.state
    if plan.undecided:
        valid = replicas - sum(1 for _ in plan.reject)
        open_replicas = Assignment.objects.filter(
            task_id=task.id, state__in=[AssignmentState.LEASED, AssignmentState.RUNNING]
        ).exists()
        if not open_replicas and valid >= task.replicas_wanted:
            if policy.replicas_exhausted(task.replicas_wanted, task.job.replication):
                task_fail(task=task, reason=f"{valid} replicas never reached a quorum of {_quorum(task)}")
                return TaskState.FAILED
            # No majority yet: one more replica, on another node, decides.
            Task.objects.filter(id=task.id).update(replicas_wanted=F("replicas_wanted") + 1)
            logger.info("task %s of job %s: replicas disagree, leasing one more", task.index, task.job_id)
    return task.state


def _why(kind: ReplicatedKind[Any], summary: str, accepted: list[Any], value: Any) -> str:
    """The rejection reason: the summary, and what the kind can say about how `value` differs."""
    if not accepted:
        return summary
    try:
        detail = kind.explain(accepted[0], value)
    except Exception as exc:  # an explanation is a courtesy: never let it stop a verdict
        if faults.is_ours(exc):
            raise
        logger.exception("could not explain a rejected %s replica", kind.name)
        return summary
    return f"{summary}: {detail}" if detail else summary
