"""Starting a train job: its dataset (a render job's merged COCO zip, or an uploaded one) becomes product crops,
split into a validation set only the marketplace sees and one shard per participant slot; the initial weights
are round 0's. Also each round's task plans and the inputs (weights, shard) its assignments download."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.federated import storage
from marketplace.federated.models import TrainData, TrainRound
from marketplace.federated.spec import TrainSpec, stored
from marketplace.jobs.kinds import TaskPlan
from marketplace.jobs.models import Assignment, Job, JobAsset, JobOutput, Task
from protocol import TrainHyper, TrainPayload

logger = logging.getLogger(__name__)


def spec_of(job: Job) -> TrainSpec:
    return stored(job.spec)


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


def round_plans(job: Job, spec: TrainSpec, data: TrainData, index: int) -> list[TaskPlan]:
    # The model, a batch of crops, the optimizer's state and torch itself: a generous bound for the CPU path.
    ram_mb = 1500 if spec.model == "smallcnn" else 3000
    return [
        TaskPlan(
            payload=TrainPayload(
                job_id=str(job.id),
                round=index,
                participant=p,
                model=spec.model,
                num_classes=len(data.classes),
                image_size=spec.image_size,
                local_steps=spec.local_steps,
                hyper=TrainHyper(batch_size=spec.batch_size, optimizer=spec.optimizer, lr=spec.learning_rate),
                compression=spec.compression.model_dump(mode="json"),
                seed=seed_of(spec, index, p),
            ).to_json(),
            requirements={"gpus": 0, "cpu_cores": 1, "ram_mb": ram_mb, "software": ["torch"]},
            group=index,
        )
        for p in range(spec.participants)
    ]


def weights_store(job: Job, index: int, state: dict[str, Any]) -> dict[str, Any]:
    """Store a round's global weights (before the round opens, outside any transaction). The name carries the
    digest, so two racing closes of one round never overwrite each other's file."""
    from training.weights import state_to_bytes

    data = state_to_bytes(state)
    digest = hashlib.sha256(data).hexdigest()
    name = f"training/{job.id}/round-{index:04d}-{digest[:16]}.safetensors"
    if storage.exists(name):
        # The same bytes, stored by a close that raced this one: rewriting them would only open a gap for readers.
        return {"name": name, "sha256": digest, "size": len(data)}
    return storage.put(name, data)


def round_open(job: Job, spec: TrainSpec, index: int, stored: dict[str, Any]) -> TrainRound:
    """Open round `index` on weights stored by weights_store."""
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

    spec = spec_of(job)
    existing = TrainData.objects.filter(job=job).first()
    if existing is not None:
        # Started before (a split redelivered after a crash, or run twice at once): the same round 0.
        return round_plans(job, spec, existing, 0)
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
            info = storage.put(f"training/{job.id}/shard-{p:03d}.safetensors", path.read_bytes())
            shards.append({**info, "samples": len(part.labels)})
        val_path = Path(tmp) / "val.safetensors"
        save_set(val_path, val)
        val_info = storage.put(f"training/{job.id}/val.safetensors", val_path.read_bytes())
    state = initial_state(spec.model, len(crops.classes), spec.image_size, spec.seed)
    baseline = evaluate(spec.model, len(crops.classes), spec.image_size, state, val)
    stored = weights_store(job, 0, state)
    data = TrainData(
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
    try:
        with transaction.atomic():
            data.save(force_insert=True)
            round_open(job, spec, 0, stored)
    except IntegrityError:
        # A concurrent start of the same job won: use what it prepared.
        return round_plans(job, spec, TrainData.objects.get(job=job), 0)
    logger.info(
        "train job %s: %d classes, %d train / %d validation crops in %d shards; untrained accuracy %.3f",
        job.id,
        len(crops.classes),
        len(train.labels),
        len(val.labels),
        len(shards),
        baseline["accuracy"],
    )
    return round_plans(job, spec, data, 0)


def assignment_inputs(*, assignment: Assignment, task: Task) -> list[dict[str, Any]]:
    """The round's global weights and the participant's shard, as signed URLs."""
    data = TrainData.objects.get(job_id=task.job_id)
    rnd = TrainRound.objects.get(job_id=task.job_id, index=task.group)
    shard = data.shards[int(task.payload["participant"])]
    return [
        {
            "path": "global.safetensors",
            "url": storage.file_url(name=rnd.weights_name, assignment_id=assignment.id),
            "sha256": rnd.weights_sha256,
        },
        {
            "path": "shard.safetensors",
            "url": storage.file_url(name=shard["name"], assignment_id=assignment.id),
            "sha256": shard["sha256"],
        },
    ]
