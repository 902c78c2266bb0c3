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
from training.compress import CompressionSpec, compress, decompress, matrix_shape, planned_encoding, topk_count
from training.data import CropSet
from training.evaluate import evaluate
from training.local import float_keys

# Thresholds. Figures from tests/training/test_verify.py::test_replay_thresholds_separate_honest_from_fabricated
# (`pytest -s` prints them: coloured squares, smallcnn, 10 local steps, 6 rounds), from 15-round runs of the same
# setup (20 steps), and from bench/train_comm.py's last round on rendered product crops (25 steps, round 24).
# docs/training.md, "Verification", has the tables.
#
# none/fp16/int8: relative error of the claimed update to the replay put through the same quantiser. Honest CPU
# replica: 0 (bit-identical). Replay from weights nudged by 1e-6 (a stand-in for GPU/CPU float drift: no GPU was
# available to measure it): 2e-6 to 2.2e-3. A lazy node (¼ of the steps): 0.73 to 0.95. A random update of the
# same per-layer norms: 1.41 to 1.42.
DENSE_MAX_REL_ERROR = 0.05
# topk, given the node's previous update: coordinates outside the residual bound (see _topk_bound_check).
# Honest and nudged replays: 0 in every round measured (21 rounds). Random updates: 7 to 6417 on squares (fewest
# late, when the residual is 10-92× the update), 21 on product crops; lazy nodes: 16 to 12583, and 7. The drift
# allowance is per coordinate, a fraction of the layer's largest replayed magnitude.
TOPK_DRIFT_ATOL = 0.01
TOPK_MAX_VIOLATIONS = 0
# topk without the previous update (a weak test): cosine on the sent coordinates. Honest 0.67 to 1.0 over the
# first 10 rounds on squares, but 0.03 to 0.41 in rounds 10-14, once the residual is 30-90× the update; random
# updates -0.43 to 0.42 (few coordinates, heavy-tailed replay).
TOPK_MIN_COSINE = 0.5
# powersgd (a weak test): cosine in the node's sent subspace. Honest 0.33 to 1.0 on squares (6 rounds), 0.74 on
# product crops, but 0.09 to 0.31 from round 3 of 20-step rounds on squares; random updates -0.07 to 0.09; a
# lazy node passes (0.2 to 0.9).
POWERSGD_MIN_COSINE = 0.1
# Norm bound: reject an update whose norm exceeds this many times the median of the round's norms.
NORM_FACTOR = 3.0


def update_norm(delta: dict[str, Tensor]) -> float:
    """The L2 norm of an update over all its layers (float64 sums)."""
    total = 0.0
    for t in delta.values():
        total += float(torch.sum(t.detach().to("cpu", torch.float64) ** 2))
    return math.sqrt(total)


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


def _flat(delta: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([delta[n].detach().to("cpu", torch.float64).reshape(-1) for n in names])


def _cosine(a: Tensor, b: Tensor) -> float:
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(torch.dot(a, b)) / (na * nb)


def _sent_threshold(values: Tensor, k: int) -> tuple[Tensor, float]:
    """(sent mask, τ) of a top-k layer as received: τ = the smallest sent magnitude, every unsent |x| ≤ τ.

    A sent value can be exactly 0 only when the layer had fewer than k non-zero values; then τ = 0."""
    sent = values != 0
    count = int(sent.sum())
    tau = float(values[sent].abs().min()) if count >= k and count else 0.0
    return sent, tau


def _residual_bound(previous: dict[str, Tensor], name: str, spec: CompressionSpec) -> Tensor:
    """Per coordinate, the largest |residual| an honest node can carry into this round, from its previous update:
    0 where it sent the coordinate (or the whole layer dense), the previous τ elsewhere."""
    prev = previous[name].detach().to("cpu", torch.float64).reshape(-1)
    if planned_encoding(tuple(previous[name].shape), spec) == "dense":
        return torch.zeros_like(prev)
    sent, tau = _sent_threshold(prev, topk_count(prev.numel(), spec.topk_fraction))
    return torch.where(sent, torch.zeros_like(prev), torch.full_like(prev, tau))


def _topk_bound_check(
    claimed: dict[str, Tensor], replayed: dict[str, Tensor], spec: CompressionSpec, previous: dict[str, Tensor]
) -> tuple[bool, str]:
    # With error feedback the node sends top-k(δ + e), e its residual. The marketplace does not know e, but it
    # knows a bound on it from the node's previous update: after top-k, what stays behind is 0 on the sent
    # coordinates and at most τ_prev (the smallest value sent) on the others. So an honest update satisfies,
    # per layer, exactly (up to float drift):   sent j: |c_j − δ_j| ≤ B_j     unsent j: |δ_j| ≤ τ + B_j
    # A fabricated update breaks the first on the coordinates it invents and the second where δ is large.
    violations = checked = sent_total = 0
    for name in sorted(replayed):
        c = claimed[name].detach().to("cpu", torch.float64).reshape(-1)
        r = replayed[name].detach().to("cpu", torch.float64).reshape(-1)
        bound = _residual_bound(previous, name, spec)
        atol = TOPK_DRIFT_ATOL * float(r.abs().max()) if r.numel() else 0.0
        if planned_encoding(tuple(claimed[name].shape), spec) == "dense":
            violations += int(((c - r).abs() > bound + atol).sum())
            checked += c.numel()
            sent_total += c.numel()
            continue
        k = topk_count(c.numel(), spec.topk_fraction)
        sent, tau = _sent_threshold(c, k)
        if int(sent.sum()) > k:
            return False, f"{name}: {int(sent.sum())} coordinates sent, top-k allows {k}"
        violations += int(((c - r).abs() > bound + atol)[sent].sum())
        violations += int((r.abs() > tau + bound + atol)[~sent].sum())
        checked += c.numel()
        sent_total += int(sent.sum())
    ok = violations <= TOPK_MAX_VIOLATIONS
    return ok, (
        f"{violations} of {checked} coordinates ({sent_total} sent) outside the residual bound of the previous "
        f"update ({'≤' if ok else '>'} {TOPK_MAX_VIOLATIONS} allowed)"
    )


def _subspace_cosine(claimed: dict[str, Tensor], replayed: dict[str, Tensor], spec: CompressionSpec) -> float:
    # PowerSGD sends P Qᵀ with Qᵀ = Pᵀ(δ + e): compare Pᵀc with Pᵀδ, the replay seen through the node's P.
    a: list[Tensor] = []
    b: list[Tensor] = []
    for name in sorted(replayed):
        c = claimed[name].detach().to("cpu", torch.float64)
        r = replayed[name].detach().to("cpu", torch.float64)
        if planned_encoding(tuple(c.shape), spec) == "lowrank":
            rows, cols = matrix_shape(tuple(c.shape))
            cm, rm = c.reshape(rows, cols), r.reshape(rows, cols)
            p = torch.linalg.svd(cm, full_matrices=False).U[:, : min(spec.rank, rows, cols)]
            a.append((p.T @ cm).reshape(-1))
            b.append((p.T @ rm).reshape(-1))
        else:
            a.append(c.reshape(-1))
            b.append(r.reshape(-1))
    return _cosine(torch.cat(a), torch.cat(b))


def replay_check(
    claimed: dict[str, Tensor],
    replayed: dict[str, Tensor],
    compression: CompressionSpec,
    *,
    previous: dict[str, Tensor] | None = None,
) -> tuple[bool, str]:
    """Compare a node's claimed update (decompressed) with the marketplace's replay of its local steps.

    `replayed` is the raw delta of `train_local` from the same global weights, shard, hyper-parameters and seed.
    - none/fp16/int8: relative error against the replay put through the same quantiser.
    - topk: with `previous` (the last update this node sent for this job, decompressed, whichever round and shard
      it was; all zeros if none), an exact test that needs no knowledge of the residual (`_topk_bound_check`);
      without it, the weaker cosine on the sent coordinates, which an honest node fails once its residual
      dominates (docs/training.md).
    - powersgd: cosine in the node's sent subspace.
    Returns (ok, reason naming the measured figure and the threshold).
    """
    if set(claimed) != set(replayed):
        return False, "claimed and replayed updates have different layers"
    names = sorted(replayed)
    for name in names:
        if claimed[name].shape != replayed[name].shape:
            return False, f"{name}: claimed shape {tuple(claimed[name].shape)} != {tuple(replayed[name].shape)}"
    c = _flat(claimed, names)
    if not bool(torch.isfinite(c).all()):
        return False, "claimed update has non-finite values"
    if not bool(torch.isfinite(_flat(replayed, names)).all()):
        return False, "the replay diverged (non-finite values): nothing to compare with"
    if compression.name in ("none", "fp16", "int8"):
        payload, _ = compress(replayed, compression)
        r = _flat(decompress(payload), names)
        scale = float(torch.linalg.vector_norm(r))
        err = float(torch.linalg.vector_norm(c - r)) / scale if scale > 0 else float(torch.linalg.vector_norm(c))
        ok = err <= DENSE_MAX_REL_ERROR
        return ok, f"relative error to the replay {err:.3g} {'≤' if ok else '>'} {DENSE_MAX_REL_ERROR:g}"
    if compression.name == "topk":
        if previous is not None:
            if set(previous) != set(replayed):
                raise ValueError("previous update has other layers than the replay")
            return _topk_bound_check(claimed, replayed, compression, previous)
        sent = c != 0
        cos = _cosine(c[sent], _flat(replayed, names)[sent])
        ok = cos >= TOPK_MIN_COSINE
        return ok, (
            f"cosine with the replay on the {int(sent.sum())} sent coordinates {cos:.3f} {'≥' if ok else '<'} "
            f"{TOPK_MIN_COSINE:g} (no previous update given: weak test)"
        )
    cos = _subspace_cosine(claimed, replayed, compression)
    ok = cos >= POWERSGD_MIN_COSINE
    return ok, f"cosine with the replay in the sent subspace {cos:.3f} {'≥' if ok else '<'} {POWERSGD_MIN_COSINE:g}"


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


@dataclass(frozen=True)
class Candidate:
    """One well-formed update of a round, as the verdict sees it. `replay` redoes the node's local steps (called
    only for the updates chosen for a replay); `previous` gives the node's last update before this one (top-k's
    exact replay test needs it; zeros if none)."""

    key: str
    delta: dict[str, Tensor]
    samples: float
    replay: Callable[[], dict[str, Tensor]]
    previous: Callable[[], dict[str, Tensor]]


@dataclass(frozen=True)
class Thresholds:
    norm_factor: float
    suspicious_factor: float
    loss_tolerance: float
    replay_share: float


@dataclass
class RoundVerdict:
    accepted: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    reference_norm: float = 0.0
    replayed: list[str] = field(default_factory=list)


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
    median of two is their mean and one huge update would drag it up. An update is rejected when its norm exceeds
    norm_factor × the reference, or when, applied at the weight it would have in the aggregate, it raises the
    held-out loss by more than the tolerance; a random share of the rest (replay_share), and every update whose
    norm exceeds suspicious_factor × the reference, is replayed and must match (`replay_check`).
    """
    verdict = RoundVerdict()
    verdict.norms = {c.key: float(update_norm(c.delta)) for c in candidates}
    pool = list(verdict.norms.values()) if len(verdict.norms) >= 3 else [*verdict.norms.values(), *history]
    reference = statistics.median(pool) if pool else 0.0
    verdict.reference_norm = reference
    total = sum(c.samples for c in candidates)
    for candidate in sorted(candidates, key=lambda c: c.key):
        key, norm = candidate.key, verdict.norms[candidate.key]
        if reference > 0 and norm > thresholds.norm_factor * reference:
            verdict.rejected[key] = (
                f"update norm {norm:.4g} exceeds {thresholds.norm_factor:g}× the round's median {reference:.4g}"
            )
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
        # Honest norms differ a lot between shards, so standing out is a reason to look, not to reject.
        suspicious = reference > 0 and norm > thresholds.suspicious_factor * reference
        if suspicious or chooser.random() < thresholds.replay_share:
            verdict.replayed.append(key)
            ok, why = replay_check(
                candidate.delta,
                candidate.replay(),
                compression,
                previous=candidate.previous() if compression.name == "topk" else None,
            )
            if not ok:
                verdict.rejected[key] = f"replay check failed: {why}"
                continue
            verdict.accepted[key] = f"accepted in round {round_index}; replayed: {why}"
        else:
            verdict.accepted[key] = f"accepted in round {round_index}"
    return verdict
