"""Checks the marketplace runs on a node's update: layout and finiteness, norm bounds, replay, held-out loss."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from training.aggregate import apply
from training.compress import CompressionSpec
from training.data import CropSet
from training.evaluate import evaluate
from training.local import float_keys
from training.replay import (
    DENSE_MAX_REL_ERROR,
    POWERSGD_MAX_REL_ERROR,
    POWERSGD_MIN_COSINE,
    TOPK_DRIFT_ATOL,
    TOPK_MAX_VIOLATIONS,
    TOPK_MIN_COSINE,
    replay_check,
)

__all__ = [
    "DENSE_MAX_REL_ERROR",
    "POWERSGD_MAX_REL_ERROR",
    "POWERSGD_MIN_COSINE",
    "TOPK_DRIFT_ATOL",
    "TOPK_MAX_VIOLATIONS",
    "TOPK_MIN_COSINE",
    "Candidate",
    "RoundVerdict",
    "Thresholds",
    "check_update",
    "loss_check",
    "norm_check",
    "progress_check",
    "replay_check",
    "round_verdict",
    "shard_progress",
    "update_norm",
    "update_shapes",
]

# Norm bound: reject an update whose norm exceeds this many times the median of the round's norms.
NORM_FACTOR = 3.0
# Crops of the node's own shard the progress check evaluates on (all of a smaller shard).
PROGRESS_SAMPLE = 256
# Step sizes along an update at which the progress check measures the loss on the node's own shard.
PROGRESS_SCALES = (1.0, 0.5, 0.25)


def update_norm(delta: dict[str, Tensor]) -> float:
    """The L2 norm of an update over all its layers (float64 sums)."""
    total = 0.0
    for t in delta.values():
        total += float(torch.sum(t.detach().to("cpu", torch.float64) ** 2))
    return math.sqrt(total)


def update_shapes(reference_state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """The layers an update of `reference_state` carries (its float tensors), name → shape: what
    `compress.decompress(payload, shapes=…)` checks every layer header against before allocating."""
    return {name: tuple(int(d) for d in reference_state[name].shape) for name in float_keys(reference_state)}


def check_update(delta: dict[str, Tensor], reference_state: dict[str, Tensor]) -> str | None:
    """Why an update cannot be used on `reference_state` (layers, shapes, dtype, non-finite values), or None."""
    expected = set(float_keys(reference_state))
    missing, extra = sorted(expected - set(delta)), sorted(set(delta) - expected)
    if missing or extra:
        return f"layers differ from the model: missing {missing[:5]}, unexpected {extra[:5]}"
    for name in float_keys(reference_state):
        t, ref = delta[name], reference_state[name]
        if tuple(t.shape) != tuple(ref.shape):
            return f"{name}: shape {tuple(t.shape)}, the model has {tuple(ref.shape)}"
        if not t.is_floating_point():
            return f"{name}: dtype {t.dtype} is not a float type"
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            return f"{name}: {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)"
    return None


def norm_check(norm: float, round_norms: list[float], factor: float = NORM_FACTOR) -> tuple[bool, str]:
    """Whether an update's norm is within `factor` × the median of the round's update norms (its own included)."""
    if not round_norms:
        raise ValueError("no norms to compare with")
    median = statistics.median(round_norms)
    ok = math.isfinite(norm) and norm <= factor * median
    return ok, f"update norm {norm:.4g} {'≤' if ok else '>'} {factor:g} × round median {median:.4g}"


def loss_check(
    model: str,
    num_classes: int,
    image_size: int,
    state: dict[str, Tensor],
    delta: dict[str, Tensor],
    val: CropSet,
    tolerance: float,
    device: str = "cpu",
    *,
    scale: float = 1.0,
) -> tuple[bool, str]:
    """Whether `state` + scale × `delta` keeps the held-out loss within `tolerance` of the loss of `state`.

    Pass scale = the update's share of the aggregate (its weight ÷ the round's total) to judge it as it would
    count; at scale 1 an honest update of many local steps overfits its own shard and raises the held-out loss
    late in training (docs/training.md, "Verification").
    """
    before = evaluate(model, num_classes, image_size, state, val, device)["loss"]
    after = evaluate(model, num_classes, image_size, apply(state, delta, scale), val, device)["loss"]
    ok = math.isfinite(after) and after <= before + tolerance
    return ok, (
        f"held-out loss {before:.4f} → {after:.4f} ({after - before:+.4f} at scale {scale:g}; tolerance +{tolerance:g})"
    )


def shard_progress(
    model: str,
    num_classes: int,
    image_size: int,
    state: dict[str, Tensor],
    delta: dict[str, Tensor],
    shard: CropSet,
    *,
    sample: int = PROGRESS_SAMPLE,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[float, float]:
    """The loss of `state`, and the least loss of `state` + s × `delta` for s in PROGRESS_SCALES, on a sample of
    the node's own shard (the same `sample` crops, drawn from `seed`): an update trained on that shard lowers it
    at one of these step sizes at least (`round_verdict`, the progress check). At s = 1 alone an honest update
    can overshoot: measured rises of the loss from 0.004 to 0.12 late in training, and +13 % for a first
    PowerSGD update (bench/train_verify.py)."""
    if len(shard) > sample:
        pick = torch.randperm(len(shard), generator=torch.Generator().manual_seed(seed))[:sample]
        shard = CropSet(shard.images[pick], shard.labels[pick], shard.classes)
    before = evaluate(model, num_classes, image_size, state, shard, device)["loss"]
    after = min(
        evaluate(model, num_classes, image_size, apply(state, delta, scale), shard, device)["loss"]
        for scale in PROGRESS_SCALES
    )
    return before, after


def progress_check(before: float, after: float, min_progress: float, min_loss: float) -> tuple[bool, str]:
    """Whether the loss on the node's own shard fell by at least `min_progress` (a fraction of `before`). Only
    judged where the shard is not learnt yet (`before` ≥ `min_loss`): below that, honest updates were measured
    raising it (SGD noise around a near-zero loss), and the norm floor and the replay decide alone."""
    gain = (before - after) / before if before > 0 else 0.0
    figures = f"loss on the node's own shard {before:.4f} → {after:.4f} ({100 * gain:+.1f} %"
    if math.isfinite(before) and before < min_loss:
        return True, f"{figures}; not judged below a loss of {min_loss:g})"
    ok = math.isfinite(after) and gain >= min_progress
    return ok, f"{figures}; {'≥' if ok else '<'} {100 * min_progress:g} % needed)"


@dataclass(frozen=True)
class Candidate:
    """One well-formed update of a round, as the verdict sees it. `replay` redoes the node's local steps (called
    only for the updates chosen for a replay); `previous` gives the node's last update before this one (the exact
    replay tests of top-k and PowerSGD need it; zeros if none); `shard` loads the node's own shard (the progress
    check); `seed` is the one the node's compression used; `replay_probability` the chance it is replayed
    (the marketplace's reputation rule)."""

    key: str
    delta: dict[str, Tensor]
    samples: float
    replay: Callable[[], dict[str, Tensor]]
    previous: Callable[[], dict[str, Tensor]]
    shard: Callable[[], CropSet] | None = None
    seed: int | None = None
    replay_probability: float = 1.0


@dataclass(frozen=True)
class Thresholds:
    norm_factor: float
    suspicious_factor: float
    loss_tolerance: float
    # Below this × the reference norm an update made no measurable progress (a zero update always is).
    min_norm_fraction: float = 0.0
    # The least relative fall of the loss on the node's own shard (with a shard to measure on), judged where
    # that loss is at least progress_min_loss.
    min_shard_progress: float = 0.0
    progress_min_loss: float = 0.0


@dataclass
class RoundVerdict:
    accepted: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    reference_norm: float = 0.0
    replayed: list[str] = field(default_factory=list)
    # Rejected updates that are proof of work not done (no progress, or a failed replay): the caller bans the node.
    caught: list[str] = field(default_factory=list)
    # Relative fall of the loss on each update's own shard.
    progress: dict[str, float] = field(default_factory=dict)


def round_verdict(
    candidates: list[Candidate],
    *,
    model: str,
    num_classes: int,
    image_size: int,
    state: dict[str, Tensor],
    val: CropSet,
    compression: CompressionSpec,
    history: list[float],
    thresholds: Thresholds,
    round_index: int,
    chooser: random.Random,
) -> RoundVerdict:
    """Judge a round's well-formed updates: (accepted: why, rejected: why) plus the figures behind them.

    The reference norm is the median of this round's update norms when there are three or more (a minority of
    poisoned ones cannot move it); with fewer, `history` (last round's accepted norms) joins them, since the
    median of two is their mean and one huge update would drag it up. In order, an update is rejected when:
    its norm exceeds norm_factor × the reference; it is zero or below min_norm_fraction × the reference (no
    measurable progress: caught); applied at the weight it would have in the aggregate, it raises the held-out
    loss by more than the tolerance; it lowers the loss on a sample of the node's own shard (where that loss is
    at least progress_min_loss) by less than min_shard_progress (caught); or, replayed, it does not match
    (`replay_check`: caught). Replayed are every update whose norm exceeds suspicious_factor × the reference and
    the others with their candidate's replay_probability, drawn from `chooser` in key order (seed it for a
    reproducible choice).
    """
    verdict = RoundVerdict()
    verdict.norms = {c.key: float(update_norm(c.delta)) for c in candidates}
    pool = list(verdict.norms.values()) if len(verdict.norms) >= 3 else [*verdict.norms.values(), *history]
    reference = statistics.median(pool) if pool else 0.0
    verdict.reference_norm = reference
    total = sum(c.samples for c in candidates)
    for candidate in sorted(candidates, key=lambda c: c.key):
        key, norm = candidate.key, verdict.norms[candidate.key]
        # Drawn first, for every candidate, so one candidate's outcome never shifts another's draw.
        draw = chooser.random()
        if reference > 0 and norm > thresholds.norm_factor * reference:
            verdict.rejected[key] = (
                f"update norm {norm:.4g} exceeds {thresholds.norm_factor:g}× the round's median {reference:.4g}"
            )
            continue
        if norm == 0.0 or norm < thresholds.min_norm_fraction * reference:
            verdict.rejected[key] = (
                f"no measurable progress: update norm {norm:.4g} below {thresholds.min_norm_fraction:g}× the "
                f"round's median {reference:.4g}"
            )
            verdict.caught.append(key)
            continue
        # Judged at the weight it would have in the aggregate: alone at full weight, an honest update that did
        # many local steps overfits its shard and raises held-out loss late in training (docs/training.md).
        ok, why = loss_check(
            model,
            num_classes,
            image_size,
            state,
            candidate.delta,
            val,
            thresholds.loss_tolerance,
            scale=candidate.samples / total,
        )
        if not ok:
            verdict.rejected[key] = f"held-out loss check failed: {why}"
            continue
        if candidate.shard is not None:
            before, after = shard_progress(
                model, num_classes, image_size, state, candidate.delta, candidate.shard(), seed=round_index
            )
            verdict.progress[key] = (before - after) / before if before > 0 else 0.0
            ok, why = progress_check(before, after, thresholds.min_shard_progress, thresholds.progress_min_loss)
            if not ok:
                verdict.rejected[key] = f"no measurable progress: {why}"
                verdict.caught.append(key)
                continue
        # Honest norms differ a lot between shards, so standing out is a reason to look, not to reject.
        suspicious = reference > 0 and norm > thresholds.suspicious_factor * reference
        if suspicious or draw < candidate.replay_probability:
            verdict.replayed.append(key)
            ok, why = replay_check(
                candidate.delta,
                candidate.replay(),
                compression,
                previous=candidate.previous() if compression.keeps_residual else None,
                seed=candidate.seed,
            )
            if not ok:
                verdict.rejected[key] = f"replay check failed: {why}"
                verdict.caught.append(key)
                continue
            verdict.accepted[key] = f"accepted in round {round_index}; replayed: {why}"
        else:
            verdict.accepted[key] = f"accepted in round {round_index}"
    return verdict
