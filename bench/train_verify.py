"""The figures behind the marketplace's lazy-training checks (training/verify.py, training/replay.py): honest
updates against lazy (¼ of the local steps), tiny (the honest update × 1e-3), zero and fabricated ones, per
compression method, over the rounds of a small federated run.

    .venv/bin/python bench/train_verify.py [--participants 3] [--rounds 12] [--local-steps 20] [--crops 600]

The data are the test suite's coloured squares (tests/training/helpers.py, 16², 4 classes) in class-balanced
shards; the model `smallcnn`; FedAvg of every participant's compressed update (error feedback per node) each
round. Per round and participant it measures: the replay statistic (`replay_check`'s figure) of the honest update
against a second CPU replay (the spread), against a replay from weights nudged by a relative 1e-6 (a stand-in for
GPU/CPU float drift), of the lazy update and of a fabricated one (random, the honest per-layer norms); the honest
update's norm ÷ the round's median; the relative fall of the loss on the node's own shard for the honest, lazy,
tiny and fabricated updates (over all rounds, and where the check judges it: the shard's loss ≥ 0.1). The
baseline of each figure is the honest update's, printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.training.helpers import squares  # noqa: E402
from training.aggregate import aggregate, apply  # noqa: E402
from training.compress import CompressionSpec, compress, decompress  # noqa: E402
from training.data import shard  # noqa: E402
from training.local import HyperParams, train_local  # noqa: E402
from training.verify import replay_check, shard_progress, update_norm  # noqa: E402

MODEL, CLASSES, SIZE = "smallcnn", 4, 16
PROGRESS_MIN_LOSS = 0.1  # HASHWORK["TRAIN_PROGRESS_MIN_LOSS"]


def _figure(reason: str) -> float:
    """The measured figure of a replay_check reason: the violation count for top-k, else the number before the
    comparison sign."""
    words = reason.split()
    if words[0].isdigit():
        return float(words[0])
    return float(next(words[i - 1] for i, w in enumerate(words) if w in ("≤", "≥", "<", ">")))


def _fake(d: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in d.items():
        noise = torch.randn(v.shape, generator=gen)
        out[k] = noise * (v.norm() / noise.norm().clamp_min(1e-12))
    return out


def _gain(state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], crops: object, seed: int) -> float:
    before, after = shard_progress(MODEL, CLASSES, SIZE, state, delta, crops, seed=seed)  # type: ignore[arg-type]
    return (before - after) / before


def _judged(state: dict[str, torch.Tensor], crops: object, seed: int) -> bool:
    """Whether the progress check judges this shard: its loss at the round's weights is ≥ the setting's 0.1."""
    zero = {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()}
    before, _ = shard_progress(MODEL, CLASSES, SIZE, state, zero, crops, seed=seed)  # type: ignore[arg-type]
    return before >= PROGRESS_MIN_LOSS


def run(method: CompressionSpec, args: argparse.Namespace) -> dict[str, list[float]]:
    data = squares(args.crops, image_size=SIZE, seed=3)
    shards = [shard(data, p, args.participants, seed=0) for p in range(args.participants)]
    hp = HyperParams(batch_size=args.batch_size, lr=args.lr)
    from training.weights import initial_state

    state = initial_state(MODEL, CLASSES, SIZE, seed=0)
    residuals: list[dict[str, torch.Tensor] | None] = [None] * args.participants
    previous: list[dict[str, torch.Tensor]] = [
        {k: torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()} for _ in shards
    ]
    figures: dict[str, list[float]] = defaultdict(list)
    for rnd in range(args.rounds):
        claimed_all, norms = [], []
        for p, part in enumerate(shards):
            seed = 1000 * rnd + p
            delta = train_local(MODEL, CLASSES, SIZE, state, part, hp, args.local_steps, seed=seed).delta
            residual = residuals[p]
            if method.keeps_residual and residual is None:
                residual = {k: torch.zeros_like(v) for k, v in delta.items()}
            payload, residuals[p] = compress(delta, method, residual if method.keeps_residual else None, seed=seed)
            claimed = decompress(payload)
            replay = train_local(MODEL, CLASSES, SIZE, state, part, hp, args.local_steps, seed=seed).delta
            gen = torch.Generator().manual_seed(seed)
            nudged = {k: v * (1 + 1e-6 * torch.randn(v.shape, generator=gen)) for k, v in state.items()}
            drift = train_local(MODEL, CLASSES, SIZE, nudged, part, hp, args.local_steps, seed=seed).delta
            lazy_raw = train_local(MODEL, CLASSES, SIZE, state, part, hp, max(1, args.local_steps // 4), seed=seed)
            lazy = decompress(compress(lazy_raw.delta, method, residual, seed=seed)[0])
            fake = decompress(compress(_fake(claimed, seed + 7), method, residual, seed=seed)[0])
            prev = previous[p] if method.keeps_residual else None
            for label, c, r in (("honest", claimed, replay), ("drift", claimed, drift), ("lazy", lazy, replay)):
                figures[f"replay {label}"].append(_figure(replay_check(c, r, method, previous=prev, seed=seed)[1]))
            figures["replay fake"].append(_figure(replay_check(fake, replay, method, previous=prev, seed=seed)[1]))
            if method.name == "powersgd":
                weak = [replay_check(c, replay, method)[1] for c in (claimed, lazy)]
                figures["cosine honest"].append(_figure(weak[0]))
                figures["cosine lazy"].append(_figure(weak[1]))
            where = "judged" if _judged(state, part, rnd) else "all"
            tiny = {k: 1e-3 * v for k, v in claimed.items()}
            for label, update in (("honest", claimed), ("lazy", lazy), ("tiny", tiny), ("fake", fake)):
                gain = _gain(state, update, part, rnd)
                figures[f"progress {label}"].append(gain)
                if where == "judged":
                    figures[f"progress {label}, judged"].append(gain)
            previous[p] = claimed
            claimed_all.append(claimed)
            norms.append(update_norm(claimed))
        median = statistics.median(norms)
        figures["norm ÷ median honest"] += [n / median for n in norms]
        state = apply(state, aggregate(claimed_all, [float(len(s)) for s in shards], "fedavg"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--crops", type=int, default=600)
    parser.add_argument("--methods", nargs="*", default=["none", "int8", "topk", "powersgd"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(
        f"squares {SIZE}², {args.crops} crops, {args.participants} shards, {MODEL}, {args.rounds} rounds of "
        f"{args.local_steps} steps (batch {args.batch_size}, lr {args.lr}); min … max over rounds and participants"
    )
    print(f"{'method':<9}{'figure':<22}{'min':>11}{'median':>11}{'max':>11}")
    for name in args.methods:
        figures = run(CompressionSpec(name, topk_fraction=0.05, rank=4), args)
        for label, values in figures.items():
            print(f"{name:<9}{label:<22}{min(values):>11.4g}{statistics.median(values):>11.4g}{max(values):>11.4g}")
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
