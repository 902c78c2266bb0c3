"""What a round's verification loads for one update (no lock held): the replay of the node's local steps, the
node's previous update for this job, and its own shard."""

from __future__ import annotations

from typing import Any

from marketplace.federated import storage
from marketplace.federated.models import TrainData
from marketplace.federated.spec import TrainSpec
from marketplace.jobs.models import Result, Task


def shard_of(data: TrainData, task: Task) -> Any:
    """The participant's shard (a training.data.CropSet), as its node downloaded it."""
    from training.data import load_set

    shard = data.shards[int(task.payload["participant"])]
    with storage.local(shard["name"], ".safetensors") as path:
        return load_set(path)


def replay(spec: TrainSpec, data: TrainData, task: Task, state: dict[str, Any]) -> dict[str, Any]:
    """The participant's local training, redone here on the CPU from the same seed, weights and shard."""
    from training.local import HyperParams, train_local

    crops = shard_of(data, task)
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


def previous_update(result: Result, state: dict[str, Any]) -> dict[str, Any]:
    """The last update this node sent for this job before `result` (decompressed; zeros if none): with it the
    top-k and PowerSGD replay checks bound the node's error-feedback residual without knowing it (training.verify). An
    upload the node lost leaves this one round behind: its next check may then fail once."""
    import torch

    from training.compress import decompress
    from training.verify import update_shapes

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
                return decompress(handle.read(), shapes=update_shapes(state))
        except ValueError:
            pass
    return {name: torch.zeros_like(value) for name, value in state.items() if value.is_floating_point()}
