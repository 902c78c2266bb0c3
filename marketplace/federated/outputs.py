"""A finished train job's output: the final model (safetensors) and its model card, zipped."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from django.core.files.base import File
from django.utils import timezone

from marketplace.federated.models import TrainData
from marketplace.federated.spec import TrainSpec
from marketplace.jobs.models import Job, JobOutput


def model_output(
    *, job: Job, spec: TrainSpec, data: TrainData, state: dict[str, Any], reason: str, rounds: list[dict[str, Any]]
) -> JobOutput:
    """The job's output row, not saved yet; its zip is already in the storage. `rounds` are every round's
    {"round": index, **metrics}, this last one included."""
    from training.weights import save_model

    last = rounds[-1] if rounds else {}
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
                "round": r["round"],
                **{
                    k: r.get(k)
                    for k in ("accuracy", "loss", "accepted", "bytes_up", "bytes_down", "wall_seconds", "closed_by")
                },
            }
            for r in rounds
        ],
        "finished_because": reason,
        "created_at": timezone.now().isoformat(),
    }
    with TemporaryDirectory(prefix="hw-model-") as tmp:
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
    return output
