"""Closing a train round (its quorum is in, or its deadline passed): the updates are checked against each other
(norm above k × the median, or near zero), against held-out data (loss alone) and the node's own shard (it must
lower that loss), a share set by the node's reputation (trust.replay_probability) is replayed here from the same
seed, weights and shard (the policy: training.verify.round_verdict); a node caught not training is blocked from
the job (trust.node_caught); the accepted ones are aggregated, paid and counted;
stragglers are cancelled (their late updates are refused and not paid); the new weights are evaluated and the
next round opens, or the job finishes with its model and model card.

All of that is computed with no lock held; the outcome is applied in one short transaction, which first checks
that the round is still open (a concurrent close wins once: the other's work is dropped)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max
from django.utils import timezone

from marketplace.core import deliveries
from marketplace.core.enqueue import schedule_request
from marketplace.core.queues import TaskName
from marketplace.core.redis_admin import once_per
from marketplace.federated import replays, storage, trust
from marketplace.federated.kind import TrainKind
from marketplace.federated.models import RoundState, TrainData, TrainRound
from marketplace.federated.outputs import model_output
from marketplace.federated.spec import TrainSpec
from marketplace.federated.start import round_open, round_plans, spec_of, weights_store
from marketplace.federated.updates import decode, quorum, round_close_request
from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobOutput, JobState, Result, Task, TaskState
from marketplace.jobs.transitions import job_transition, task_transition
from marketplace.jobs.verification import assignment_accept, assignment_reject

logger = logging.getLogger(__name__)


def _val(data: TrainData) -> Any:
    from training.data import load_set

    with storage.local(data.val_name, ".safetensors") as path:
        return load_set(path)


@dataclass
class _Outcome:
    """What closing a round decided, ready to apply."""

    accepted: dict[UUID, str]
    rejected: dict[UUID, str]
    caught: set[UUID]
    malformed: dict[UUID, str]
    judged: set[UUID]
    tasks: dict[UUID, UUID]
    nodes: dict[UUID, UUID]
    metrics: dict[str, Any]
    state: dict[str, Any]
    finished: str = ""


def _participant(result: Result) -> int:
    return int(result.assignment.task.payload["participant"])


def _judge(*, job: Job, spec: TrainSpec, data: TrainData, rnd: TrainRound, results: list[Result], why: str) -> Any:
    """Verify, aggregate and evaluate a round's updates (no lock held): an _Outcome, or the malformed ones alone
    ({assignment id: reason}) when no update is usable."""
    from training.aggregate import aggregate, apply
    from training.compress import CompressionSpec
    from training.evaluate import evaluate
    from training.verify import Candidate, Thresholds, round_verdict

    started = time.perf_counter()
    updates: dict[UUID, tuple[Result, dict[str, Any]]] = {}
    malformed: dict[UUID, str] = {}
    for result in results:
        delta, problem = decode(result, rnd)
        if delta is None:
            malformed[result.assignment_id] = problem
        else:
            updates[result.assignment_id] = (result, delta)
    if not updates:
        return malformed
    val, state = _val(data), storage.weights(rnd)
    samples = {aid: float(data.shards[_participant(r)]["samples"]) for aid, (r, _) in updates.items()}
    previous = TrainRound.objects.filter(job_id=rnd.job_id, index=rnd.index - 1).first()
    hw = settings.HASHWORK
    nodes = trust.nodes_of({r.assignment.node_id for r, _ in updates.values()})
    verdict = round_verdict(
        [
            Candidate(
                key=str(aid),
                delta=delta,
                samples=samples[aid],
                replay=lambda r=result: replays.replay(spec, data, r.assignment.task, state),
                previous=lambda r=result: replays.previous_update(r, state),
                shard=lambda r=result: replays.shard_of(data, r.assignment.task),
                seed=int(result.assignment.task.payload["seed"]),
                replay_probability=trust.replay_probability(nodes[result.assignment.node_id]),
            )
            for aid, (result, delta) in updates.items()
        ],
        model=spec.model,
        num_classes=len(data.classes),
        image_size=spec.image_size,
        state=state,
        val=val,
        compression=CompressionSpec(**spec.compression.model_dump()),
        history=list(previous.metrics.get("accepted_norms", [])) if previous else [],
        thresholds=Thresholds(
            norm_factor=hw["TRAIN_NORM_FACTOR"],
            suspicious_factor=hw["TRAIN_SUSPICIOUS_FACTOR"],
            loss_tolerance=hw["TRAIN_LOSS_TOLERANCE"],
            min_norm_fraction=hw["TRAIN_MIN_NORM_FRACTION"],
            min_shard_progress=hw["TRAIN_MIN_SHARD_PROGRESS"],
            progress_min_loss=hw["TRAIN_PROGRESS_MIN_LOSS"],
        ),
        round_index=rnd.index,
        chooser=trust.replay_chooser(rnd.job_id, rnd.index),
    )
    accepted = {UUID(k): v for k, v in verdict.accepted.items()}
    rejected = {UUID(k): v for k, v in verdict.rejected.items()}
    caught = {UUID(k) for k in verdict.caught}
    if accepted:
        # In participant order, so the sum (and the model) does not depend on the assignments' random ids.
        ordered = sorted(accepted, key=lambda a: _participant(updates[a][0]))
        delta = aggregate([updates[a][1] for a in ordered], [samples[a] for a in ordered], spec.aggregation)
        state = apply(state, delta)
    scores = evaluate(spec.model, len(data.classes), spec.image_size, state, val)
    down: dict[str, int] = {}
    for assignment in Assignment.objects.filter(task__job=job, task__group=rnd.index).select_related("task"):
        if assignment.started_at is not None:
            shard = data.shards[int(assignment.task.payload["participant"])]
            node = str(assignment.node_id)
            down[node] = down.get(node, 0) + rnd.weights_size + int(shard["size"])
    up: dict[str, int] = {}
    for result, _ in updates.values():
        node = str(result.assignment.node_id)
        up[node] = up.get(node, 0) + int(result.size)
    metrics = {
        "accuracy": round(float(scores["accuracy"]), 6),
        "loss": round(float(scores["loss"]), 6),
        "accepted": len(accepted),
        "rejected": {str(a): r for a, r in verdict.rejected.items()},
        "bytes_up": up,
        "bytes_down": down,
        "wall_seconds": round((timezone.now() - rnd.opened_at).total_seconds(), 3),
        "verify_seconds": round(time.perf_counter() - started, 3),
        "accepted_norms": [round(verdict.norms[str(a)], 6) for a in sorted(accepted, key=str)],
        "reference_norm": round(float(verdict.reference_norm), 6),
        "replayed": verdict.replayed,
        "caught": verdict.caught,
        "shard_progress": {k: round(v, 6) for k, v in verdict.progress.items()},
        "closed_by": why,
    }
    outcome = _Outcome(
        accepted=accepted,
        rejected=rejected,
        caught=caught,
        malformed=malformed,
        judged={r.assignment_id for r in results},
        tasks={r.assignment_id: r.assignment.task_id for r in results},
        nodes={r.assignment_id: r.assignment.node_id for r in results},
        metrics=metrics,
        state=state,
    )
    if spec.target_accuracy is not None and scores["accuracy"] >= spec.target_accuracy:
        outcome.finished = f"reached the target accuracy {spec.target_accuracy:g} in round {rnd.index}"
    elif rnd.index + 1 >= spec.rounds:
        outcome.finished = f"trained all {spec.rounds} rounds"
    return outcome


def round_close(*, job_id: UUID, index: int, why: str) -> str:
    """Close a round (quorum reached or deadline passed): verify, aggregate, pay, evaluate, go on. Idempotent."""
    rnd = TrainRound.objects.filter(job_id=job_id, index=index).first()
    if rnd is None or rnd.state == RoundState.CLOSED:
        return "already closed"
    job = Job.objects.get(id=job_id)
    if job.state != JobState.RUNNING:
        TrainRound.objects.filter(id=rnd.id, state=RoundState.OPEN).update(
            state=RoundState.CLOSED, closed_at=timezone.now(), close_reason=f"job {job.state}"
        )
        return f"job {job.state}"
    spec, data = spec_of(job), TrainData.objects.get(job=job)
    results = list(
        Result.objects.filter(
            assignment__task__job=job, assignment__task__group=index, assignment__state=AssignmentState.SUBMITTED
        ).select_related("assignment__task")
    )
    outcome = _judge(job=job, spec=spec, data=data, rnd=rnd, results=results, why=why)
    if not isinstance(outcome, _Outcome):
        with transaction.atomic():
            for aid, reason in outcome.items():
                result = next(r for r in results if r.assignment_id == aid)
                assignment_reject(aid, result.assignment.node_id, reason)
            if why == "deadline":
                # Nobody delivered in time (nodes vanished, or none was free): give the round another window.
                # The job's own deadline bounds how long this goes on.
                TrainRound.objects.filter(id=rnd.id, state=RoundState.OPEN).update(
                    deadline=timezone.now() + timedelta(seconds=spec.round_deadline_seconds)
                )
                logger.info("train job %s: round %d had no update by its deadline; extended", job_id, index)
        return "waiting"
    output = None
    if outcome.finished:
        rounds = [{"round": r.index, **r.metrics} for r in TrainRound.objects.filter(job=job, index__lt=index)]
        output = model_output(
            job=job,
            spec=spec,
            data=data,
            state=outcome.state,
            reason=outcome.finished,
            rounds=[*rounds, {"round": index, **outcome.metrics}],
        )
    else:
        stored = weights_store(job, index + 1, outcome.state)
    with transaction.atomic():
        if not TrainRound.objects.select_for_update().filter(id=rnd.id, state=RoundState.OPEN).exists():
            if output is not None:
                output.file.delete(save=False)
            return "already closed"
        state = Job.objects.values_list("state", flat=True).get(id=job_id)
        if state != JobState.RUNNING:
            # Cancelled or expired while the round was judged: nothing of it is applied.
            if output is not None:
                output.file.delete(save=False)
            TrainRound.objects.filter(id=rnd.id).update(
                state=RoundState.CLOSED, closed_at=timezone.now(), close_reason=f"job {state}"
            )
            return f"job {state}"
        _apply(job=job, spec=spec, data=data, rnd=rnd, outcome=outcome, why=why)
        if output is not None:
            _finish(job=job, output=output, reason=outcome.finished)
            result = "finished"
        else:
            round_open(job, spec, index + 1, stored)
            _tasks_create(job=job, spec=spec, data=data, index=index + 1)
            schedule_request()
            result = "next round"
    logger.info(
        "train job %s: round %d closed (%s): %d accepted, %d rejected, accuracy %.3f",
        job_id,
        index,
        why,
        len(outcome.accepted),
        len(outcome.rejected),
        outcome.metrics["accuracy"],
    )
    return result


def _apply(*, job: Job, spec: TrainSpec, data: TrainData, rnd: TrainRound, outcome: _Outcome, why: str) -> None:
    """The round's verdict, under its row lock: pay and count the accepted, reject the rest (blocking the caught
    nodes from the job), stop stragglers."""
    for aid, reason in outcome.malformed.items():
        assignment_reject(aid, outcome.nodes[aid], reason)
    for aid, reason in outcome.rejected.items():
        assignment_reject(aid, outcome.nodes[aid], reason)
        task_transition(task_id=outcome.tasks[aid], to=TaskState.FAILED, reason=reason)
        if aid in outcome.caught:
            # Proof of work not done (no progress, or a failed replay): no more of this job for that node.
            trust.node_caught(job_id=job.id, node_id=outcome.nodes[aid], reason=reason)
    for aid, reason in outcome.accepted.items():
        assignment_accept(aid, outcome.nodes[aid], reason=reason)
        task_transition(task_id=outcome.tasks[aid], to=TaskState.COMPLETED, reason=reason)
    # Updates that arrived while the round was being judged were not judged: refused like any late one.
    for late in Assignment.objects.filter(
        task__job=job, task__group=rnd.index, state=AssignmentState.SUBMITTED
    ).exclude(id__in=outcome.judged):
        assignment_reject(late.id, late.node_id, f"arrived after round {rnd.index} closed")
    # Stragglers: their tasks are cancelled and their leases revoked; a late upload gets a 409, no pay.
    dispatch.work_stop(
        job_id=job.id, reason=f"round {rnd.index} closed ({why}); late updates are refused", group=rnd.index
    )
    TrainRound.objects.filter(id=rnd.id).update(
        state=RoundState.CLOSED, closed_at=timezone.now(), close_reason=why, metrics=outcome.metrics
    )


def _tasks_create(*, job: Job, spec: TrainSpec, data: TrainData, index: int) -> None:
    plans = round_plans(job, spec, data, index)
    Task.objects.bulk_create(
        Task(
            job=job,
            index=index * spec.participants + p,
            payload=plan.payload,
            requirements=plan.requirements,
            replicas_wanted=1,
            group=plan.group,
        )
        for p, plan in enumerate(plans)
    )


def _finish(*, job: Job, output: JobOutput, reason: str) -> None:
    """The job's output (model and card) is in place; the job completes and its open work stops."""
    try:
        with transaction.atomic():
            output.save()
    except IntegrityError:
        output.file.delete(save=False)
    dispatch.work_stop(job_id=job.id, reason="the job finished")
    job_transition(job_id=job.id, to=JobState.COMPLETED, reason=reason, strict=False)
    logger.info("train job %s completed: %s (accuracy %s)", job.id, reason, output.summary.get("accuracy"))


# How long a round with its quorum in waits for the close its last update asked for before rounds_due asks again.
QUORUM_GRACE_SECONDS = 30
# How often rounds_due asks again to close one round whose close is not running (it may wait in the replay queue
# behind another job's close, or its message may have been lost).
CLOSE_REQUEST_SECONDS = 120


def rounds_due(*, now: datetime | None = None) -> int:
    """Ask to close every open round that is due: past its deadline, or with its quorum of updates submitted more
    than QUORUM_GRACE_SECONDS ago (the close the last of them asked for was lost, or its worker died). Never a round
    whose close is running, nor one given up on (core.deliveries), and each at most once per CLOSE_REQUEST_SECONDS."""
    now = now or timezone.now()
    due = {
        (job_id, index): "deadline"
        for job_id, index in TrainRound.objects.filter(
            state=RoundState.OPEN, deadline__lt=now, job__state=JobState.RUNNING
        ).values_list("job_id", "index")
    }
    submitted = (
        Assignment.objects.filter(
            state=AssignmentState.SUBMITTED, task__job__kind=TrainKind.name, task__job__state=JobState.RUNNING
        )
        .values("task__job_id", "task__group", "task__job__spec")
        .annotate(updates=Count("id"), last=Max("submitted_at"))
        .filter(last__lt=now - timedelta(seconds=QUORUM_GRACE_SECONDS))
    )
    for row in submitted:
        key = (row["task__job_id"], row["task__group"])
        if key in due or row["updates"] < quorum(int(row["task__job__spec"].get("participants", 1))):
            continue
        if TrainRound.objects.filter(job_id=key[0], index=key[1], state=RoundState.OPEN).exists():
            due[key] = "quorum"
    count = 0
    for (job_id, index), why in sorted(due.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        if deliveries.running(TaskName.ROUND_CLOSE, job_id, index) or deliveries.poisoned(
            TaskName.ROUND_CLOSE, job_id, index
        ):
            continue
        if once_per(f"round-close:{job_id}:{index}", CLOSE_REQUEST_SECONDS):
            round_close_request(job_id=job_id, index=index, why=why)
            count += 1
    return count
