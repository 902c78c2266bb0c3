"""Train jobs, round by round.

start: the job's dataset (a render job's merged COCO zip, or an uploaded one) becomes product crops, split into a
validation set only the marketplace sees and one shard per participant slot; the initial weights are round 0's.
Each round leases one task per participant, on different nodes (Task.group). An update arrives: cheap checks
(decodes, names and shapes, finite) reject it at once or leave it submitted. When a quorum of the round's
participants has submitted, or the round's deadline passes, the round closes: updates are checked against each
other (norm above k × the median) and against held-out data (loss alone), a share is replayed here from the same
seed, weights and shard; the accepted ones are aggregated, paid and counted; stragglers are cancelled (their late
updates are refused and not paid); the new weights are evaluated and the next round opens, or the job finishes
with its model and model card.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import secrets
import statistics
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.core.exceptions import Conflict, NotFound
from marketplace.federated.models import RoundState, TrainData, TrainRound
from marketplace.jobs import dispatch
from marketplace.jobs.kinds import TaskPlan
from marketplace.jobs.kinds.train import TrainSpec
from marketplace.jobs.models import (
    ASSIGNMENT_OPEN,
    Assignment,
    AssignmentState,
    Job,
    JobAsset,
    JobOutput,
    JobState,
    Result,
    Task,
    TaskState,
)
from marketplace.jobs.verification import assignment_accept, assignment_reject

logger = logging.getLogger(__name__)

FILE_SALT = "hashwork.federated.file"
# A signed input URL is good while its assignment is open, and never longer than this.
FILE_URL_MAX_AGE = 24 * 3600


# Files -------------------------------------------------------------------------------------------------------


def _put(name: str, data: bytes) -> dict[str, Any]:
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(data))
    return {"name": saved, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _get(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        data: bytes = handle.read()
    return data


@contextmanager
def _local(name: str, suffix: str) -> Iterator[Path]:
    """A stored file as a local path (the storage may be S3), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hw-train-") as tmp:
        path = Path(tmp) / f"file{suffix}"
        with default_storage.open(name, "rb") as source, path.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        yield path


def file_url(*, name: str, assignment_id: UUID) -> str:
    token = signing.dumps({"n": name, "a": str(assignment_id)}, salt=FILE_SALT, compress=True)
    return f"/api/files/{token}/"


def file_open(*, token: str) -> Any:
    """The stored file a signed URL names, while its assignment is open; NotFound otherwise (no detail leaked)."""
    try:
        claim = signing.loads(token, salt=FILE_SALT, max_age=FILE_URL_MAX_AGE)
        name, assignment_id = str(claim["n"]), UUID(claim["a"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("No such file (the link is invalid or has expired).") from None
    if not Assignment.objects.filter(id=assignment_id, state__in=ASSIGNMENT_OPEN).exists():
        raise NotFound("No such file (its assignment is no longer open).")
    return default_storage.open(name, "rb")


# Start -------------------------------------------------------------------------------------------------------


def _spec(job: Job) -> TrainSpec:
    return TrainSpec.model_validate(job.spec)


def _dataset(job: Job, spec: TrainSpec) -> tuple[Any, dict[str, Any]]:
    """The dataset's stored file and its lineage."""
    if spec.dataset.job is not None:
        output = JobOutput.objects.filter(job_id=spec.dataset.job).first()
        if output is None:
            raise ValueError(f"render job {spec.dataset.job} has no merged dataset")
        return output.file, {"render_job": str(spec.dataset.job), "images": output.summary.get("images")}
    asset = JobAsset.objects.filter(job=job, path=spec.dataset.upload).first()
    if asset is None:
        raise ValueError(f"the dataset {spec.dataset.upload} was not uploaded")
    return asset.file, {"upload": spec.dataset.upload, "sha256": asset.sha256}


def seed_of(spec: TrainSpec, round_index: int, participant: int) -> int:
    """The seed of one participant's local training in one round (the replay check uses the same)."""
    digest = hashlib.sha256(f"{spec.seed}:{round_index}:{participant}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _round_plans(job: Job, spec: TrainSpec, data: TrainData, index: int) -> list[TaskPlan]:
    # The model, a batch of crops, the optimizer's state and torch itself: a generous bound for the CPU path.
    ram_mb = 1500 if spec.model == "smallcnn" else 3000
    return [
        TaskPlan(
            payload={
                "job_id": str(job.id),
                "round": index,
                "participant": p,
                "model": spec.model,
                "num_classes": len(data.classes),
                "image_size": spec.image_size,
                "local_steps": spec.local_steps,
                "hyper": {"batch_size": spec.batch_size, "optimizer": spec.optimizer, "lr": spec.learning_rate},
                "compression": spec.compression.model_dump(mode="json"),
                "seed": seed_of(spec, index, p),
            },
            requirements={"gpus": 0, "cpu_cores": 1, "ram_mb": ram_mb, "software": ["torch"]},
            group=index,
        )
        for p in range(spec.participants)
    ]


def _round_open(job: Job, spec: TrainSpec, index: int, state: dict[str, Any]) -> TrainRound:
    from training.weights import state_to_bytes

    stored = _put(f"training/{job.id}/round-{index:04d}.safetensors", state_to_bytes(state))
    return TrainRound.objects.create(
        job=job,
        index=index,
        weights_name=stored["name"],
        weights_sha256=stored["sha256"],
        weights_size=stored["size"],
        deadline=timezone.now() + timedelta(seconds=spec.round_deadline_seconds),
    )


def train_start(*, job: Job) -> list[TaskPlan]:
    """Prepare a funded train job (crops, validation split, shards, initial weights) and return round 0's tasks.
    A dataset that cannot be used raises ValueError with the reason (the job then fails and is refunded)."""
    from training.data import crops_from_coco, save_set, shard, split
    from training.evaluate import evaluate
    from training.weights import initial_state

    spec = _spec(job)
    stored, lineage = _dataset(job, spec)
    with tempfile.TemporaryDirectory(prefix="hw-train-") as tmp:
        archive = Path(tmp) / "dataset.zip"
        with stored.open("rb") as source, archive.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        lineage["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        crops = crops_from_coco(archive, image_size=spec.image_size)
        if len(crops.classes) < 2:
            raise ValueError(f"the dataset has {len(crops.classes)} category; classification needs at least two")
        train, val = split(crops, spec.validation_fraction, spec.seed)
        if len(train.labels) < spec.participants or len(val.labels) == 0:
            raise ValueError(
                f"the dataset has {len(crops.labels)} labeled objects: too few for {spec.participants} participants "
                "and a validation split; render more images"
            )
        shards = []
        for p in range(spec.participants):
            part = shard(train, p, spec.participants, spec.seed)
            path = Path(tmp) / f"shard-{p}.safetensors"
            save_set(path, part)
            info = _put(f"training/{job.id}/shard-{p:03d}.safetensors", path.read_bytes())
            shards.append({**info, "samples": len(part.labels)})
        val_path = Path(tmp) / "val.safetensors"
        save_set(val_path, val)
        val_info = _put(f"training/{job.id}/val.safetensors", val_path.read_bytes())
    state = initial_state(spec.model, len(crops.classes), spec.image_size, spec.seed)
    baseline = evaluate(spec.model, len(crops.classes), spec.image_size, state, val)
    data = TrainData.objects.create(
        job=job,
        classes=list(crops.classes),
        image_size=spec.image_size,
        train_samples=len(train.labels),
        val_samples=len(val.labels),
        shards=shards,
        val_name=val_info["name"],
        baseline={k: round(float(v), 6) for k, v in baseline.items()},
        dataset=lineage,
    )
    _round_open(job, spec, 0, state)
    logger.info(
        "train job %s: %d classes, %d train / %d validation crops in %d shards; untrained accuracy %.3f",
        job.id,
        len(crops.classes),
        len(train.labels),
        len(val.labels),
        len(shards),
        baseline["accuracy"],
    )
    return _round_plans(job, spec, data, 0)


def assignment_inputs(*, assignment: Assignment, task: Task) -> list[dict[str, Any]]:
    """The round's global weights and the participant's shard, as signed URLs."""
    data = TrainData.objects.get(job_id=task.job_id)
    rnd = TrainRound.objects.get(job_id=task.job_id, index=task.group)
    shard = data.shards[int(task.payload["participant"])]
    return [
        {
            "path": "global.safetensors",
            "url": file_url(name=rnd.weights_name, assignment_id=assignment.id),
            "sha256": rnd.weights_sha256,
        },
        {
            "path": "shard.safetensors",
            "url": file_url(name=shard["name"], assignment_id=assignment.id),
            "sha256": shard["sha256"],
        },
    ]


# Updates -----------------------------------------------------------------------------------------------------

_WEIGHTS_CACHE: dict[str, dict[str, Any]] = {}


def _weights(rnd: TrainRound) -> dict[str, Any]:
    """A round's global weights (cached by sha256: they never change)."""
    from training.weights import state_from_bytes

    if rnd.weights_sha256 not in _WEIGHTS_CACHE:
        if len(_WEIGHTS_CACHE) > 8:
            _WEIGHTS_CACHE.clear()
        _WEIGHTS_CACHE[rnd.weights_sha256] = state_from_bytes(_get(rnd.weights_name))
    return _WEIGHTS_CACHE[rnd.weights_sha256]


def _decode(result: Result, rnd: TrainRound) -> tuple[dict[str, Any] | None, str]:
    """The update a result carries, or None and why it is unusable."""
    from training.compress import decompress
    from training.verify import check_update

    try:
        with result.artifact.open("rb") as handle:
            delta = decompress(handle.read())
    except ValueError as exc:
        return None, f"malformed update: {exc}"
    problem = check_update(delta, _weights(rnd))
    return (None, f"malformed update: {problem}") if problem else (delta, "")


def quorum(participants: int) -> int:
    return max(1, math.ceil(settings.HASHWORK["TRAIN_QUORUM"] * participants - 1e-9))


def update_received(*, task_id: UUID) -> str:
    """A node submitted its update: reject it now if it is unusable; close the round once a quorum is in."""
    close = False
    with transaction.atomic():
        task = Task.objects.select_related("job").filter(id=task_id).first()
        if task is None or task.group is None:
            return "missing"
        rnd = TrainRound.objects.select_for_update().filter(job_id=task.job_id, index=task.group).first()
        if rnd is None:
            return task.state
        results = Result.objects.filter(
            assignment__task_id=task.id, assignment__state=AssignmentState.SUBMITTED
        ).select_related("assignment")
        for result in results:
            assignment = result.assignment
            if rnd.state == RoundState.CLOSED:
                assignment_reject(assignment.id, assignment.node_id, f"arrived after round {rnd.index} closed")
                continue
            delta, problem = _decode(result, rnd)
            if delta is None:
                assignment_reject(assignment.id, assignment.node_id, problem)
                # Another node may take the participant's slot while the round is open.
                Task.objects.filter(id=task.id, state=TaskState.RUNNING).update(
                    replicas_wanted=task.replicas_wanted + 1
                )
        if rnd.state == RoundState.OPEN:
            submitted = Assignment.objects.filter(
                task__job_id=task.job_id, task__group=rnd.index, state=AssignmentState.SUBMITTED
            ).count()
            close = submitted >= quorum(_spec(task.job).participants)
        state = Task.objects.values_list("state", flat=True).get(id=task.id)
    if close:
        round_close_request(job_id=task.job_id, index=rnd.index, why="quorum")
    return str(state)


def round_close_request(*, job_id: UUID, index: int, why: str) -> None:
    from marketplace.federated.tasks import round_close_task

    transaction.on_commit(lambda: round_close_task.delay(str(job_id), index, why))


# Closing a round ---------------------------------------------------------------------------------------------


def _val(data: TrainData) -> Any:
    from training.data import load_set

    with _local(data.val_name, ".safetensors") as path:
        return load_set(path)


def _replay(spec: TrainSpec, data: TrainData, task: Task, state: dict[str, Any]) -> dict[str, Any]:
    """The participant's local training, redone here on the CPU from the same seed, weights and shard."""
    from training.data import load_set
    from training.local import HyperParams, train_local

    shard = data.shards[int(task.payload["participant"])]
    with _local(shard["name"], ".safetensors") as path:
        crops = load_set(path)
    hyper = HyperParams(batch_size=spec.batch_size, optimizer=spec.optimizer, lr=spec.learning_rate)
    return train_local(
        spec.model,
        len(data.classes),
        spec.image_size,
        state,
        crops,
        hyper,
        spec.local_steps,
        int(task.payload["seed"]),
        device="cpu",
    ).delta


def _previous_update(result: Result, state: dict[str, Any]) -> dict[str, Any]:
    """The last update this node sent for this job before `result` (decompressed; zeros if none): with it the
    top-k replay check bounds the node's error-feedback residual without knowing it (training.verify). An
    upload the node lost leaves this one round behind: its next check may then fail once."""
    import torch

    from training.compress import decompress

    earlier = (
        Result.objects.filter(
            assignment__node_id=result.assignment.node_id,
            assignment__task__job_id=result.assignment.task.job_id,
            created_at__lt=result.created_at,
        )
        .order_by("-created_at")
        .first()
    )
    if earlier is not None:
        try:
            with earlier.artifact.open("rb") as handle:
                return decompress(handle.read())
        except ValueError:
            pass
    return {name: torch.zeros_like(value) for name, value in state.items() if value.is_floating_point()}


def _verdicts(
    *, spec: TrainSpec, data: TrainData, rnd: TrainRound, updates: dict[UUID, tuple[Result, dict[str, Any]]], val: Any
) -> tuple[dict[UUID, str], dict[UUID, str], dict[str, Any]]:
    """(accepted: why, rejected: why, figures) for a round's well-formed updates."""
    from training.compress import CompressionSpec
    from training.verify import loss_check, replay_check, update_norm

    hw = settings.HASHWORK
    state = _weights(rnd)
    norms = {aid: float(update_norm(delta)) for aid, (_, delta) in updates.items()}
    previous = TrainRound.objects.filter(job_id=rnd.job_id, index=rnd.index - 1).first()
    history = list(previous.metrics.get("accepted_norms", [])) if previous else []
    # The reference norm: the median of this round's updates when there are three or more (a minority of
    # poisoned ones cannot move it); with fewer, last round's accepted norms join them, since the median of two
    # is their mean and one huge update would drag it up. Updates shrink as training converges, so old rounds
    # are not used when this one has enough.
    pool = list(norms.values()) if len(norms) >= 3 else list(norms.values()) + history
    reference = statistics.median(pool)
    accepted: dict[UUID, str] = {}
    rejected: dict[UUID, str] = {}
    replayed: list[str] = []
    compression = CompressionSpec(**spec.compression.model_dump())
    chooser = secrets.SystemRandom()
    samples = {
        aid: float(data.shards[int(result.assignment.task.payload["participant"])]["samples"])
        for aid, (result, _) in updates.items()
    }
    for aid, (result, delta) in sorted(updates.items(), key=lambda kv: str(kv[0])):
        norm = norms[aid]
        if reference > 0 and norm > hw["TRAIN_NORM_FACTOR"] * reference:
            rejected[aid] = (
                f"update norm {norm:.4g} exceeds {hw['TRAIN_NORM_FACTOR']:g}× the round's median {reference:.4g}"
            )
            continue
        # Judged at the weight it would have in the aggregate: alone at full weight, an honest update that did
        # many local steps overfits its shard and raises held-out loss late in training (docs/training.md).
        ok, why = loss_check(
            spec.model,
            len(data.classes),
            spec.image_size,
            state,
            delta,
            val,
            hw["TRAIN_LOSS_TOLERANCE"],
            scale=samples[aid] / sum(samples.values()),
        )
        if not ok:
            rejected[aid] = f"held-out loss check failed: {why}"
            continue
        # A random share is replayed, and every update whose norm stands out (honest norms differ a lot between
        # shards, so standing out is a reason to look, not to reject).
        suspicious = reference > 0 and norm > hw["TRAIN_SUSPICIOUS_FACTOR"] * reference
        if suspicious or chooser.random() < hw["TRAIN_REPLAY_SHARE"]:
            replayed.append(str(aid))
            ok, why = replay_check(
                delta,
                _replay(spec, data, result.assignment.task, state),
                compression,
                previous=_previous_update(result, state) if compression.name == "topk" else None,
            )
            if not ok:
                rejected[aid] = f"replay check failed: {why}"
                continue
            accepted[aid] = f"accepted in round {rnd.index}; replayed: {why}"
        else:
            accepted[aid] = f"accepted in round {rnd.index}"
    figures = {"norms": {str(a): round(n, 6) for a, n in norms.items()}, "reference_norm": reference}
    figures["replayed"] = replayed
    return accepted, rejected, figures


def round_close(*, job_id: UUID, index: int, why: str) -> str:
    """Close a round (quorum reached or deadline passed): verify, aggregate, pay, evaluate, go on. Idempotent."""
    from training.aggregate import aggregate, apply
    from training.evaluate import evaluate

    started = time.perf_counter()
    with transaction.atomic():
        rnd = TrainRound.objects.select_for_update().filter(job_id=job_id, index=index).first()
        if rnd is None or rnd.state == RoundState.CLOSED:
            return "already closed"
        job = Job.objects.get(id=job_id)
        if job.state != JobState.RUNNING:
            TrainRound.objects.filter(id=rnd.id).update(
                state=RoundState.CLOSED, closed_at=timezone.now(), close_reason=f"job {job.state}"
            )
            return f"job {job.state}"
        spec, data = _spec(job), TrainData.objects.get(job=job)
        results = list(
            Result.objects.filter(
                assignment__task__job=job, assignment__task__group=index, assignment__state=AssignmentState.SUBMITTED
            ).select_related("assignment__task")
        )
        updates: dict[UUID, tuple[Result, dict[str, Any]]] = {}
        for result in results:
            delta, problem = _decode(result, rnd)
            if delta is None:
                assignment_reject(result.assignment_id, result.assignment.node_id, problem)
            else:
                updates[result.assignment_id] = (result, delta)
        if not updates:
            if why == "deadline":
                # Nobody delivered in time (nodes vanished, or none was free): give the round another window.
                # The job's own deadline bounds how long this goes on.
                TrainRound.objects.filter(id=rnd.id).update(
                    deadline=timezone.now() + timedelta(seconds=spec.round_deadline_seconds)
                )
                logger.info("train job %s: round %d had no update by its deadline; extended", job_id, index)
            return "waiting"
        val = _val(data)
        accepted, rejected, figures = _verdicts(spec=spec, data=data, rnd=rnd, updates=updates, val=val)
        state = _weights(rnd)
        if accepted:
            shard_samples = {
                aid: float(data.shards[int(updates[aid][0].assignment.task.payload["participant"])]["samples"])
                for aid in accepted
            }
            # In participant order, so the sum (and the model) does not depend on the assignments' random ids.
            ordered = sorted(accepted, key=lambda a: int(updates[a][0].assignment.task.payload["participant"]))
            delta = aggregate([updates[a][1] for a in ordered], [shard_samples[a] for a in ordered], spec.aggregation)
            state = apply(state, delta)
        scores = evaluate(spec.model, len(data.classes), spec.image_size, state, val)
        for aid, reason in rejected.items():
            assignment_reject(aid, updates[aid][0].assignment.node_id, reason)
            Task.objects.filter(id=updates[aid][0].assignment.task_id).update(
                state=TaskState.FAILED, state_reason=reason, updated_at=timezone.now()
            )
        for aid, reason in accepted.items():
            assignment_accept(aid, updates[aid][0].assignment.node_id, reason=reason)
            Task.objects.filter(id=updates[aid][0].assignment.task_id).update(
                state=TaskState.COMPLETED, state_reason=reason, updated_at=timezone.now()
            )
        # Stragglers: their tasks are cancelled and their leases revoked; a late upload gets a 409, no pay.
        dispatch.work_stop(job_id=job.id, reason=f"round {index} closed ({why}); late updates are refused", group=index)
        down = {}
        for assignment in Assignment.objects.filter(task__job=job, task__group=index).select_related("task"):
            if assignment.started_at is not None:
                shard = data.shards[int(assignment.task.payload["participant"])]
                node = str(assignment.node_id)
                down[node] = down.get(node, 0) + rnd.weights_size + int(shard["size"])
        up: dict[str, int] = {}
        for result, _ in updates.values():
            node = str(result.assignment.node_id)
            up[node] = up.get(node, 0) + int(result.size)
        now = timezone.now()
        metrics = {
            "accuracy": round(float(scores["accuracy"]), 6),
            "loss": round(float(scores["loss"]), 6),
            "accepted": len(accepted),
            "rejected": {str(a): r for a, r in rejected.items()},
            "bytes_up": up,
            "bytes_down": down,
            "wall_seconds": round((now - rnd.opened_at).total_seconds(), 3),
            "verify_seconds": round(time.perf_counter() - started, 3),
            "accepted_norms": [figures["norms"][str(a)] for a in sorted(accepted, key=str)],
            "reference_norm": round(float(figures["reference_norm"]), 6),
            "replayed": figures["replayed"],
            "closed_by": why,
        }
        TrainRound.objects.filter(id=rnd.id).update(
            state=RoundState.CLOSED, closed_at=now, close_reason=why, metrics=metrics
        )
        logger.info(
            "train job %s: round %d closed (%s): %d accepted, %d rejected, accuracy %.3f",
            job_id,
            index,
            why,
            len(accepted),
            len(rejected),
            scores["accuracy"],
        )
        target = spec.target_accuracy
        if target is not None and scores["accuracy"] >= target:
            _finish(job, spec, data, state, f"reached the target accuracy {target:g} in round {index}")
            return "finished"
        if index + 1 >= spec.rounds:
            _finish(job, spec, data, state, f"trained all {spec.rounds} rounds")
            return "finished"
        _round_open(job, spec, index + 1, state)
        plans = _round_plans(job, spec, data, index + 1)
        Task.objects.bulk_create(
            Task(
                job=job,
                index=(index + 1) * spec.participants + p,
                payload=plan.payload,
                requirements=plan.requirements,
                replicas_wanted=1,
                group=plan.group,
            )
            for p, plan in enumerate(plans)
        )
        from marketplace.jobs.services import schedule_request

        transaction.on_commit(schedule_request)
    return "next round"


def _finish(job: Job, spec: TrainSpec, data: TrainData, state: dict[str, Any], reason: str) -> None:
    """The final model (safetensors) and its model card, zipped as the job's output; the job completes."""
    from training.weights import save_model

    rounds = list(TrainRound.objects.filter(job=job).order_by("index"))
    last = rounds[-1].metrics if rounds else {}
    card = {
        "format": "hashwork-model-card/1",
        "job": str(job.id),
        "model": spec.model,
        "classes": data.classes,
        "image_size": spec.image_size,
        "spec": job.spec,
        "dataset": {**data.dataset, "train_crops": data.train_samples, "validation_crops": data.val_samples},
        "untrained": data.baseline,
        "final": {"accuracy": last.get("accuracy"), "loss": last.get("loss")},
        "rounds": [
            {
                "round": r.index,
                **{
                    k: r.metrics.get(k)
                    for k in ("accuracy", "loss", "accepted", "bytes_up", "bytes_down", "wall_seconds", "closed_by")
                },
            }
            for r in rounds
        ],
        "finished_because": reason,
        "created_at": timezone.now().isoformat(),
    }
    with tempfile.TemporaryDirectory(prefix="hw-model-") as tmp:
        model_path = Path(tmp) / "model.safetensors"
        save_model(model_path, state, model=spec.model, classes=list(data.classes), image_size=spec.image_size)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(model_path, "model.safetensors")
            archive.writestr("model_card.json", json.dumps(card, indent=2))
    payload = buffer.getvalue()
    output = JobOutput(
        job=job,
        size=len(payload),
        summary={
            "accuracy": last.get("accuracy"),
            "untrained_accuracy": data.baseline.get("accuracy"),
            "rounds": len(rounds),
            "classes": len(data.classes),
        },
    )
    output.file.save("model.zip", File(io.BytesIO(payload)), save=False)
    try:
        with transaction.atomic():
            output.save()
    except IntegrityError:
        pass
    dispatch.work_stop(job_id=job.id, reason="the job finished")
    Job.objects.filter(id=job.id, state=JobState.RUNNING).update(
        state=JobState.COMPLETED, state_reason=reason, finished_at=timezone.now(), updated_at=timezone.now()
    )
    logger.info("train job %s completed: %s (accuracy %s)", job.id, reason, last.get("accuracy"))


def rounds_due() -> int:
    """Ask to close every open round past its deadline (once per 30 s each: a close may take a while)."""
    from marketplace.nodes.broker import admin_client

    due = TrainRound.objects.filter(state=RoundState.OPEN, deadline__lt=timezone.now(), job__state=JobState.RUNNING)
    count = 0
    for job_id, index in list(due.values_list("job_id", "index")):
        if admin_client().set(f"{settings.REDIS_PREFIX}round-close:{job_id}:{index}", "1", nx=True, ex=30):
            round_close_request(job_id=job_id, index=index, why="deadline")
            count += 1
    return count


def rounds_of(*, job: Job) -> list[TrainRound]:
    if job.kind != "train":
        raise Conflict(f"This is a {job.kind} job; only train jobs have rounds.")
    return list(TrainRound.objects.filter(job=job).order_by("index"))
