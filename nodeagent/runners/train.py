"""The `train` runner: one participant's local training in one round of a federated train job.

Inputs (fetched and sha256-checked by the worker): WORKDIR/inputs/global.safetensors (the round's weights) and
WORKDIR/inputs/shard.safetensors (this participant's crops). The artifact is the compressed update
(training.compress): what the marketplace aggregates. Error feedback (top-k) keeps the residual between rounds in
the node's state folder, per job: STATE/train/<job id>/residual.safetensors.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nodeagent import progress
from protocol import TrainPayload


def residual_path(workdir: Path, job_id: str) -> Path:
    # WORKDIR is STATE/work/<assignment>-<random>: the node's state folder is two levels up.
    return workdir.parent.parent / "train" / job_id / "residual.safetensors"


def run(payload: dict[str, Any], workdir: Path | None = None) -> dict[str, Any]:
    """Train a protocol.TrainPayload's local steps from the round's weights on the shard; write the update."""
    from safetensors.torch import load_file, save_file

    from training.compress import CompressionSpec, compress
    from training.data import load_set
    from training.local import HyperParams, pick_device, train_local
    from training.weights import state_from_bytes

    assert workdir is not None, "the train runner needs a working directory"
    task = TrainPayload.from_json(payload)
    inputs = workdir / "inputs"
    state = state_from_bytes((inputs / "global.safetensors").read_bytes())
    shard = load_set(inputs / "shard.safetensors")
    steps = task.local_steps
    device = pick_device()
    progress.report(workdir, 0, steps)
    started = time.perf_counter()
    result = train_local(
        task.model,
        task.num_classes,
        task.image_size,
        state,
        shard,
        HyperParams(batch_size=task.hyper.batch_size, optimizer=task.hyper.optimizer, lr=task.hyper.lr),
        steps,
        task.seed,
        device=device,
        progress=lambda done, total: progress.report(workdir, done, total),
    )
    spec = CompressionSpec(**task.compression)
    keeper = residual_path(workdir, task.job_id)
    residual = load_file(str(keeper)) if keeper.exists() else None
    update, new_residual = compress(result.delta, spec, residual, seed=task.seed)
    (workdir / "artifact").write_bytes(update)
    if new_residual is not None:
        keeper.parent.mkdir(parents=True, exist_ok=True)
        tmp = keeper.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in new_residual.items()}, str(tmp))
        tmp.replace(keeper)
    return {
        **{k: round(float(v), 6) for k, v in result.metrics.items()},
        "round": task.round,
        "participant": task.participant,
        "device": device,
        "bytes": len(update),
        "seconds": round(time.perf_counter() - started, 3),
    }
