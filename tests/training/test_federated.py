"""End to end in-process: a few FedAvg rounds over four participants' shards learn an easy task."""

from __future__ import annotations

from tests.training.helpers import squares
from training.aggregate import aggregate, apply
from training.compress import CompressionSpec, compress, decompress
from training.data import shard, split
from training.evaluate import evaluate
from training.local import HyperParams, train_local
from training.weights import initial_state


def test_fedavg_rounds_with_topk_updates_raise_held_out_accuracy_far_above_chance() -> None:
    crops = squares(480, image_size=16, seed=11)
    train, val = split(crops, 0.25, seed=0)
    shards = [shard(train, k, 4, seed=0) for k in range(4)]
    state = initial_state("smallcnn", 4, 16, seed=0)
    before = evaluate("smallcnn", 4, 16, state, val)["accuracy"]
    spec = CompressionSpec("topk", topk_fraction=0.1)
    residuals: list[dict | None] = [None] * 4
    for round_ in range(4):
        deltas = []
        for k, part in enumerate(shards):
            result = train_local("smallcnn", 4, 16, state, part, HyperParams(), steps=8, seed=100 * round_ + k)
            payload, residuals[k] = compress(result.delta, spec, residuals[k], seed=round_)
            deltas.append(decompress(payload))
        state = apply(state, aggregate(deltas, [float(len(s)) for s in shards], "fedavg"))
    after = evaluate("smallcnn", 4, 16, state, val)
    assert before < 0.45
    print(f"held-out accuracy {before:.3f} → {after['accuracy']:.3f}")
    assert after["accuracy"] >= 0.8, after
