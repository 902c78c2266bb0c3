"""The replay check: a node's claimed update (decompressed) against the marketplace's replay of its local steps,
per compression method (training/verify.py applies it in a round's verdict)."""

from __future__ import annotations

import torch
from torch import Tensor

from training.compress import CompressionSpec, compress, decompress, matrix_shape, planned_encoding, topk_count

# Thresholds. Figures from tests/training/test_verify.py::test_replay_thresholds_separate_honest_from_fabricated
# (`pytest -s` prints them: coloured squares, smallcnn, 10 local steps, 6 rounds), from 15-round runs of the same
# setup (20 steps), from bench/train_comm.py's last round on rendered product crops (25 steps, round 24) and from
# bench/train_verify.py. docs/training.md, "Verification", and docs/benchmarks.md have the tables.
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
# powersgd, given the node's previous update and the compression seed: relative error of the sketch in the
# previous update's column space (see _powersgd_sketch_check), where the node's residual is exactly zero.
# Figures: bench/train_verify.py (docs/benchmarks.md, "Training verification").
POWERSGD_MAX_REL_ERROR = 0.05
# powersgd without the previous update (a weak test): cosine in the node's sent subspace. Honest 0.33 to 1.0 on
# squares (6 rounds), 0.74 on product crops, but 0.09 to 0.31 from round 3 of 20-step rounds on squares; random
# updates -0.07 to 0.09; a lazy node passes (0.2 to 0.9).
POWERSGD_MIN_COSINE = 0.1
# Singular values of a previous low-rank layer below this × its largest are float noise, not a sent direction.
_SPAN_RTOL = 1e-5


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


def lowrank_sketches(layers: dict[str, Tensor], spec: CompressionSpec, seed: int) -> dict[str, Tensor]:
    """The random matrices G (cols × rank) `compress` drew for the low-rank layers of an update with these layers,
    in this order, from `seed`: the same generator and the same draws."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name, tensor in layers.items():
        shape = tuple(int(d) for d in tensor.shape)
        if planned_encoding(shape, spec) == "lowrank":
            rows, cols = matrix_shape(shape)
            out[name] = torch.randn(cols, min(spec.rank, rows, cols), generator=gen)
    return out


def _column_space(previous: Tensor) -> Tensor | None:
    """An orthonormal basis of a previous low-rank layer's column space (its P), or None if it was all zeros."""
    u, sv, _ = torch.linalg.svd(previous, full_matrices=False)
    if not sv.numel() or float(sv[0]) == 0.0:
        return None
    basis: Tensor = u[:, sv > _SPAN_RTOL * float(sv[0])]
    return basis


def _powersgd_sketch_check(
    claimed: dict[str, Tensor],
    replayed: dict[str, Tensor],
    spec: CompressionSpec,
    previous: dict[str, Tensor],
    seed: int,
) -> tuple[bool, str]:
    # PowerSGD with error feedback sends c = P Pᵀ m, with m = δ + e (e: the node's residual, unknown here) and
    # P = orth(m G), G drawn from the seed. Two identities need no knowledge of e:
    # - m G lies in span(P), so c G = m G = δ G + e G;
    # - the residual left by the node's previous update, e = m' − P' P'ᵀ m', is orthogonal to span(P'), the column
    #   space of that update (c' = P' Q'ᵀ). So P'ᵀ c G = P'ᵀ δ G exactly, whatever e is. With no previous update
    #   (a zero layer) e = 0 and c G = δ G in full. Layers sent dense carry no residual: c = δ.
    # A lazy or fabricated update breaks these; an honest one matches up to float drift.
    sketches = lowrank_sketches(claimed, spec, seed)
    a: list[Tensor] = []
    b: list[Tensor] = []
    for name, tensor in claimed.items():
        c = tensor.detach().to("cpu", torch.float64)
        r = replayed[name].detach().to("cpu", torch.float64)
        if name not in sketches:
            a.append(c.reshape(-1))
            b.append(r.reshape(-1))
            continue
        rows, cols = matrix_shape(tuple(c.shape))
        g = sketches[name].to(torch.float64)
        cg, rg = c.reshape(rows, cols) @ g, r.reshape(rows, cols) @ g
        basis = _column_space(previous[name].detach().to("cpu", torch.float64).reshape(rows, cols))
        if basis is not None:
            cg, rg = basis.T @ cg, basis.T @ rg
        a.append(cg.reshape(-1))
        b.append(rg.reshape(-1))
    ca, rb = torch.cat(a), torch.cat(b)
    scale = float(torch.linalg.vector_norm(rb))
    diff = float(torch.linalg.vector_norm(ca - rb))
    err = diff / scale if scale > 0 else diff
    ok = err <= POWERSGD_MAX_REL_ERROR
    return ok, (
        f"relative error to the replay in the residual-free sketch {err:.3g} {'≤' if ok else '>'} "
        f"{POWERSGD_MAX_REL_ERROR:g}"
    )


def replay_check(
    claimed: dict[str, Tensor],
    replayed: dict[str, Tensor],
    compression: CompressionSpec,
    *,
    previous: dict[str, Tensor] | None = None,
    seed: int | None = None,
) -> tuple[bool, str]:
    """Compare a node's claimed update (decompressed) with the marketplace's replay of its local steps.

    `replayed` is the raw delta of `train_local` from the same global weights, shard, hyper-parameters and seed.
    - none/fp16/int8: relative error against the replay put through the same quantiser.
    - topk: with `previous` (the last update this node sent for this job, decompressed, whichever round and shard
      it was; all zeros if none), an exact test that needs no knowledge of the residual (`_topk_bound_check`);
      without it, the weaker cosine on the sent coordinates, which an honest node fails once its residual
      dominates (docs/training.md).
    - powersgd: with `previous` (as for top-k) and `seed` (the one `compress` used), an exact test in the
      column space of the previous update, where the residual is zero (`_powersgd_sketch_check`); without
      them the weak cosine in the node's sent subspace, which a lazy node passes.
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
    if previous is not None and seed is not None:
        if set(previous) != set(replayed):
            raise ValueError("previous update has other layers than the replay")
        return _powersgd_sketch_check(claimed, replayed, compression, previous, seed)
    cos = _subspace_cosine(claimed, replayed, compression)
    ok = cos >= POWERSGD_MIN_COSINE
    return ok, (
        f"cosine with the replay in the sent subspace {cos:.3f} {'≥' if ok else '<'} {POWERSGD_MIN_COSINE:g} "
        "(no previous update or seed given: weak test)"
    )
