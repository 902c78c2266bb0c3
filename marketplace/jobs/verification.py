"""Verifying submitted results by replica agreement: accept the majority, reject the odd one out, ask for one
more replica on another node when there is no majority yet; update reputations; complete tasks and jobs."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from marketplace.jobs import kinds
from marketplace.jobs.dispatch import assignment_end, task_fail
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Result, Task, TaskState
from marketplace.nodes.models import Node
from marketplace.payments.services import payout_create

logger = logging.getLogger(__name__)


def assignment_accept(assignment_id: UUID, node_id: UUID, reason: str = "agrees with the quorum") -> None:
    """Accept a replica: reputation up, and its payout created in the same transaction."""
    if assignment_end(assignment_id=assignment_id, to=AssignmentState.ACCEPTED, reason=reason):
        Node.objects.filter(id=node_id).update(
            valid_count=F("valid_count") + 1, consecutive_valid=F("consecutive_valid") + 1
        )
        # In the same transaction as the acceptance: accepted work always has its payout, nothing else does.
        payout_create(assignment_id=assignment_id)


def assignment_reject(assignment_id: UUID, node_id: UUID, reason: str) -> None:
    """Reject a replica with its reason: reputation down, never paid."""
    if assignment_end(assignment_id=assignment_id, to=AssignmentState.REJECTED, reason=reason):
        Node.objects.filter(id=node_id).update(invalid_count=F("invalid_count") + 1, consecutive_valid=0)
        logger.warning("assignment %s of node %s rejected: %s", assignment_id, node_id, reason)


def task_verify(*, task_id: UUID) -> str:
    """Decide what can be decided about a task's submitted replicas; returns the task's state afterwards."""
    kind_name = Task.objects.filter(id=task_id).values_list("job__kind", flat=True).first()
    if kind_name is not None and kinds.get(kind_name).verify is not None:
        verify = kinds.get(kind_name).verify
        assert verify is not None
        return verify(task_id)
    with transaction.atomic():
        task = Task.objects.select_for_update().select_related("job").filter(id=task_id).first()
        if task is None:
            logger.warning("task %s vanished before verification", task_id)
            return "missing"
        kind = kinds.get(task.job.kind)
        results = list(
            Result.objects.filter(
                assignment__task_id=task.id,
                assignment__state__in=[AssignmentState.SUBMITTED, AssignmentState.ACCEPTED],
            ).select_related("assignment")
        )
        values: dict[str, Any] = {}
        for result in results:
            try:
                values[str(result.assignment_id)] = kind.result_value(result)
            except ValueError as exc:
                assignment_reject(result.assignment_id, result.assignment.node_id, f"malformed result: {exc}")
        nodes = {str(r.assignment_id): r.assignment.node_id for r in results}
        states = {str(r.assignment_id): r.assignment.state for r in results}
        quorum = min(2, task.job.replication)

        if task.state == TaskState.COMPLETED:
            # A late replica: it must agree with what was accepted.
            accepted = [values[a] for a in values if states[a] == AssignmentState.ACCEPTED]
            for a, value in values.items():
                if states[a] == AssignmentState.SUBMITTED:
                    if any(kind.agree(good, value) for good in accepted):
                        assignment_accept(UUID(a), nodes[a])
                    else:
                        assignment_reject(
                            UUID(a), nodes[a], _why(kind, "differs from the accepted result", accepted, value)
                        )
            return task.state
        if task.state != TaskState.RUNNING:
            return task.state

        if task.spot_check and kind.spot_check is not None and values:
            return _spot_checked(task=task, kind=kind, values=values, nodes=nodes)
        verdict = kinds.decide(values, quorum=quorum, agree=kind.agree)
        if not verdict.needs_another_replica:
            for a in verdict.accepted:
                assignment_accept(UUID(a), nodes[a])
            winners = [values[a] for a in sorted(verdict.accepted)]
            for a in verdict.rejected:
                assignment_reject(
                    UUID(a), nodes[a], _why(kind, "differs from the majority of replicas", winners, values[a])
                )
            Task.objects.filter(id=task.id).update(state=TaskState.COMPLETED, updated_at=timezone.now())
            transaction.on_commit(lambda: job_complete_if_done(job_id=task.job_id))
            return TaskState.COMPLETED

        open_replicas = Assignment.objects.filter(
            task_id=task.id, state__in=[AssignmentState.LEASED, AssignmentState.RUNNING]
        ).exists()
        if not open_replicas and len(values) >= task.replicas_wanted:
            limit = task.job.replication + settings.HASHWORK["MAX_EXTRA_REPLICAS"]
            if task.replicas_wanted >= limit:
                task_fail(task=task, reason=f"{len(values)} replicas never reached a quorum of {quorum}")
                return TaskState.FAILED
            # No majority yet: one more replica, on another node, decides.
            Task.objects.filter(id=task.id).update(replicas_wanted=F("replicas_wanted") + 1)
            logger.info("task %s of job %s: replicas disagree, leasing one more", task.index, task.job_id)
        return task.state


def _why(kind: Any, summary: str, accepted: list[Any], value: Any) -> str:
    """The rejection reason: the summary, and what the kind can say about how `value` differs."""
    if kind.explain is None or not accepted:
        return summary
    try:
        detail = kind.explain(accepted[0], value)
    except Exception:  # an explanation is a courtesy: never let it stop a verdict
        logger.exception("could not explain a rejected %s replica", kind.name)
        return summary
    return f"{summary}: {detail}" if detail else summary


def _spot_checked(*, task: Task, kind: Any, values: dict[str, Any], nodes: dict[str, Any]) -> str:
    """The task's one replica (a trusted node's) against the marketplace's own re-render of a random image."""
    assert kind.spot_check is not None
    assignment_id, value = next(iter(values.items()))
    ok, reason = kind.spot_check(task, value)
    if ok:
        assignment_accept(UUID(assignment_id), nodes[assignment_id])
        Task.objects.filter(id=task.id).update(state=TaskState.COMPLETED, updated_at=timezone.now())
        transaction.on_commit(lambda: job_complete_if_done(job_id=task.job_id))
        return TaskState.COMPLETED
    assignment_reject(UUID(assignment_id), nodes[assignment_id], f"spot check failed: {reason}")
    # Trust is gone: back to full replication on other nodes.
    Task.objects.filter(id=task.id).update(replicas_wanted=task.job.replication, spot_check=False)
    return task.state


def job_complete_if_done(*, job_id: UUID) -> bool:
    """A running job whose every task is completed is completed (kinds that run in rounds complete themselves)."""
    kind_name = Job.objects.filter(id=job_id).values_list("kind", flat=True).first()
    if kind_name is None or kinds.get(kind_name).self_completing:
        return False
    if Task.objects.filter(job_id=job_id).exclude(state=TaskState.COMPLETED).exists():
        return False
    done = Job.objects.filter(id=job_id, state=JobState.RUNNING).update(
        state=JobState.COMPLETED,
        state_reason="every task verified",
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    if done:
        logger.info("job %s completed", job_id)
        kind = kinds.get(Job.objects.values_list("kind", flat=True).get(id=job_id))
        if kind.on_complete:
            from marketplace.celery import app

            transaction.on_commit(lambda: app.send_task(kind.on_complete, args=[str(job_id)]))
    return bool(done)
