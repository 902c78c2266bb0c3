"""Verification helpers: layout and finiteness, norm bound, replay of local steps, held-out loss.

`test_replay_thresholds_separate_honest_from_fabricated` is where the thresholds of training/verify.py come from:
run it with `pytest -s` to see the figures (docs/training.md records them)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from tests.training.helpers import squares
from training import verify
from training.aggregate import apply
from training.compress import COMPRESSIONS, CompressionSpec, compress, decompress
from training.data import CropSet, split
from training.local import HyperParams, train_local
from training.verify import check_update, loss_check, norm_check, replay_check, update_norm
from training.weights import initial_state

STEPS = 10


def _zeros(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: torch.zeros_like(v) for k, v in d.items()}


def _like(d: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """A random update with the same per-layer norms as `d` (a fabricated update of plausible size)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in d.items():
        noise = torch.randn(v.shape, generator=gen)
        out[k] = noise * (v.norm() / noise.norm().clamp_min(1e-12))
    return out


@dataclass
class Round:
    """One round of a node: the state it started from, its residual then, what it sent (decompressed), the
    marketplace's replay, and the node's previous update (zeros in its first round)."""

    state: dict[str, Tensor]
    residual: dict[str, Tensor] | None
    claimed: dict[str, Tensor]
    replayed: dict[str, Tensor]
    previous: dict[str, Tensor]
    seed: int


@pytest.fixture(scope="module")
def shard() -> CropSet:
    return squares(300, image_size=16, seed=3)


_HISTORY: dict[str, list[Round]] = {}


def _rounds(name: str, shard: CropSet) -> list[Round]:
    """Six rounds of one node training alone with `name` (error feedback where it has one), its updates applied
    each round; computed once per method for the module."""
    if name in _HISTORY:
        return _HISTORY[name]
    spec = CompressionSpec(name)
    state = initial_state("smallcnn", 4, 16, seed=0)
    residual = _zeros(state) if spec.keeps_residual else None
    previous = _zeros(state)
    out = []
    for n in range(6):
        delta = train_local("smallcnn", 4, 16, state, shard, HyperParams(), STEPS, seed=n).delta
        payload, new_residual = compress(delta, spec, residual, seed=n)
        claimed = decompress(payload)
        replayed = train_local("smallcnn", 4, 16, state, shard, HyperParams(), STEPS, seed=n).delta
        out.append(Round(state, residual, claimed, replayed, previous, n))
        previous, residual = claimed, new_residual
        state = apply(state, claimed)
    _HISTORY[name] = out
    return out


def _fabricate(r: Round, spec: CompressionSpec) -> dict[str, Tensor]:
    fake = _like(r.claimed, seed=1000 + r.seed)
    return decompress(compress(fake, spec, _zeros(fake) if spec.keeps_residual else None, seed=r.seed)[0])


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_an_honest_update_passes_the_replay_and_a_fabricated_one_fails(shard: CropSet, name: str) -> None:
    spec = CompressionSpec(name)
    last = _rounds(name, shard)[3]
    if spec.keeps_residual:  # the node's residual is not empty, and the marketplace does not know it
        assert last.residual is not None
        assert any(float(v.abs().max()) > 0 for v in last.residual.values())
    previous = last.previous if name == "topk" else None
    ok, reason = replay_check(last.claimed, last.replayed, spec, previous=previous)
    assert ok, reason
    ok, reason = replay_check(_fabricate(last, spec), last.replayed, spec, previous=previous)
    assert not ok, reason


def test_topk_without_the_previous_update_falls_back_to_the_cosine_on_sent_coordinates(shard: CropSet) -> None:
    spec = CompressionSpec("topk")
    r = _rounds("topk", shard)[2]
    ok, reason = replay_check(r.claimed, r.replayed, spec)
    assert ok, reason
    assert "weak test" in reason
    assert not replay_check(_fabricate(r, spec), r.replayed, spec)[0]


def _figure(reason: str) -> str:
    """The measured figure of a replay_check reason (a count for top-k, else the number before the comparison)."""
    words = reason.split()
    if words[0].isdigit():
        return words[0]
    return next(words[i - 1] for i, w in enumerate(words) if w in ("≤", "≥", "<", ">"))


def test_replay_thresholds_separate_honest_from_fabricated(shard: CropSet) -> None:
    """Per method and round: honest (a CPU replica), drift (the replay started from weights nudged by 1e-6, a
    stand-in for GPU/CPU float differences), lazy (¼ of the steps, with the honest residual), fake (random, same
    per-layer norms)."""
    print(f"\n{'method':<9}{'round':>6}  {'honest':>10}{'drift':>10}{'lazy':>10}{'fake':>10}")
    for name in COMPRESSIONS:
        spec = CompressionSpec(name)
        for r in _rounds(name, shard):
            gen = torch.Generator().manual_seed(r.seed)
            nudged = {k: v * (1 + 1e-6 * torch.randn(v.shape, generator=gen)) for k, v in r.state.items()}
            drift = train_local("smallcnn", 4, 16, nudged, shard, HyperParams(), STEPS, seed=r.seed).delta
            lazy_delta = train_local("smallcnn", 4, 16, r.state, shard, HyperParams(), STEPS // 4, seed=r.seed).delta
            lazy = decompress(compress(lazy_delta, spec, r.residual, seed=r.seed)[0])
            previous = r.previous if spec.keeps_residual else None
            pairs = [(r.claimed, r.replayed), (r.claimed, drift), (lazy, r.replayed), (_fabricate(r, spec), r.replayed)]
            (honest_ok, honest), (drift_ok, drifted), (lazy_ok, lazied), (fake_ok, faked) = [
                replay_check(claimed, replayed, spec, previous=previous, seed=r.seed) for claimed, replayed in pairs
            ]
            print(f"{name:<9}{r.seed:>6}  " + "".join(f"{_figure(x):>10}" for x in (honest, drifted, lazied, faked)))
            assert honest_ok, honest
            assert drift_ok, drifted
            assert not fake_ok, faked
            if name != "topk":
                assert not lazy_ok, lazied  # dense and PowerSGD checks catch a node that did ¼ of the work


def test_check_update_names_missing_layers_shapes_and_non_finite_values() -> None:
    state = {**initial_state("smallcnn", 4, 16, seed=0), "counter": torch.tensor(3)}
    good = {k: torch.zeros_like(v) for k, v in state.items() if k != "counter"}
    assert check_update(good, state) is None
    assert "missing ['classifier.bias']" in str(
        check_update({k: v for k, v in good.items() if k != "classifier.bias"}, state)
    )
    assert "unexpected ['counter']" in str(check_update({**good, "counter": torch.tensor(1.0)}, state))
    assert "shape (3,)" in str(check_update({**good, "classifier.bias": torch.zeros(3)}, state))
    bad = {**good, "classifier.bias": torch.tensor([0.0, float("nan"), float("inf"), 1.0])}
    assert check_update(bad, state) == "classifier.bias: 2 non-finite values (NaN or inf)"
    assert "not a float type" in str(
        check_update({**good, "classifier.bias": torch.zeros(4, dtype=torch.int64)}, state)
    )


def test_the_norm_bound_is_relative_to_the_round_median() -> None:
    assert update_norm({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}) == 5.0
    norms = [1.0, 1.2, 0.9, 1.1]
    assert norm_check(1.2, norms)[0]
    ok, reason = norm_check(120.0, [*norms, 120.0])
    assert not ok
    assert "> 3 × round median 1.1" in reason
    assert not norm_check(float("nan"), norms)[0]


def test_the_loss_check_accepts_a_useful_update_and_rejects_a_harmful_one(shard: CropSet) -> None:
    train, val = split(shard, 0.3, seed=0)
    state = initial_state("smallcnn", 4, 16, seed=0)
    for n in range(2):
        state = apply(state, train_local("smallcnn", 4, 16, state, train, HyperParams(), STEPS, seed=n).delta)
    honest = train_local("smallcnn", 4, 16, state, train, HyperParams(), STEPS, seed=9).delta
    ok, reason = loss_check("smallcnn", 4, 16, state, honest, val, tolerance=0.05)
    assert ok, reason
    poisoned = {k: -20 * v for k, v in honest.items()}
    ok, reason = loss_check("smallcnn", 4, 16, state, poisoned, val, tolerance=0.05)
    assert not ok, reason
    assert "tolerance +0.05" in reason


def test_thresholds_are_the_documented_ones() -> None:
    assert (verify.DENSE_MAX_REL_ERROR, verify.TOPK_MAX_VIOLATIONS) == (0.05, 0)


def test_replay_refuses_mismatched_layers_and_a_diverged_replay() -> None:
    claimed = {"w": torch.ones(3), "b": torch.zeros(2)}
    assert replay_check(claimed, {"w": torch.ones(3)}, CompressionSpec("none")) == (
        False,
        "claimed and replayed updates have different layers",
    )
    ok, reason = replay_check(claimed, {"w": torch.ones(4), "b": torch.zeros(2)}, CompressionSpec("int8"))
    assert not ok
    assert "claimed shape (3,)" in reason
    ok, reason = replay_check(claimed, {"w": torch.full((3,), float("nan")), "b": torch.zeros(2)}, CompressionSpec())
    assert not ok
    assert "replay diverged" in reason


def test_the_powersgd_sketch_check_is_exact_for_honest_updates_and_catches_lazy_ones(shard: CropSet) -> None:
    spec = CompressionSpec("powersgd")
    for r in _rounds("powersgd", shard):
        ok, reason = replay_check(r.claimed, r.replayed, spec, previous=r.previous, seed=r.seed)
        assert ok, reason
        assert "residual-free sketch" in reason
        assert float(_figure(reason)) < 1e-4, reason  # honest CPU replicas: float rounding only
        lazy_delta = train_local("smallcnn", 4, 16, r.state, shard, HyperParams(), STEPS // 4, seed=r.seed).delta
        lazy = decompress(compress(lazy_delta, spec, r.residual, seed=r.seed)[0])
        ok, reason = replay_check(lazy, r.replayed, spec, previous=r.previous, seed=r.seed)
        assert not ok, reason
    # The weak cosine, used without the previous update, lets the last lazy update through.
    assert replay_check(lazy, r.replayed, spec)[0]


def test_the_progress_check_needs_a_fall_of_the_own_shard_loss_where_there_is_room_to_learn(shard: CropSet) -> None:
    state = initial_state("smallcnn", 4, 16, seed=0)
    honest = train_local("smallcnn", 4, 16, state, shard, HyperParams(), STEPS, seed=1).delta
    before, after = verify.shard_progress("smallcnn", 4, 16, state, honest, shard, seed=0)
    ok, reason = verify.progress_check(before, after, 0.05, 0.1)
    assert ok, reason
    for useless in (_zeros(honest), {k: 1e-3 * v for k, v in honest.items()}):
        before, after = verify.shard_progress("smallcnn", 4, 16, state, useless, shard, seed=0)
        ok, reason = verify.progress_check(before, after, 0.05, 0.1)
        assert not ok, reason
        assert "5 % needed" in reason
    assert verify.progress_check(0.01, 0.02, 0.05, 0.1) == (
        True,
        "loss on the node's own shard 0.0100 → 0.0200 (-100.0 %; not judged below a loss of 0.1)",
    )


def _verdict(candidates: list[verify.Candidate], shard: CropSet, state: dict[str, Tensor]) -> verify.RoundVerdict:
    import random

    return verify.round_verdict(
        candidates,
        model="smallcnn",
        num_classes=4,
        image_size=16,
        state=state,
        val=shard,
        compression=CompressionSpec("none"),
        history=[],
        thresholds=verify.Thresholds(20.0, 3.0, 0.5, 0.001, 0.05, 0.1),
        round_index=0,
        chooser=random.Random(0),
    )


def test_a_round_verdict_catches_zero_and_lazy_updates_and_accepts_honest_ones(shard: CropSet) -> None:
    state = initial_state("smallcnn", 4, 16, seed=0)

    def trained(steps: int, seed: int) -> dict[str, Tensor]:
        return train_local("smallcnn", 4, 16, state, shard, HyperParams(), steps, seed=seed).delta

    def candidate(key: str, delta: dict[str, Tensor], seed: int, p: float) -> verify.Candidate:
        return verify.Candidate(
            key=key,
            delta=delta,
            samples=100.0,
            replay=lambda: trained(STEPS, seed),
            previous=lambda: _zeros(delta),
            shard=lambda: shard,
            seed=seed,
            replay_probability=p,
        )

    honest = [candidate(f"honest-{n}", trained(STEPS, n), n, 1.0) for n in range(2)]
    lazy = candidate("lazy", trained(STEPS // 4, 7), 7, 1.0)
    zero = candidate("zero", _zeros(honest[0].delta), 8, 1.0)
    verdict = _verdict([*honest, lazy, zero], shard, state)
    assert set(verdict.accepted) == {"honest-0", "honest-1"}
    assert sorted(verdict.caught) == ["lazy", "zero"]
    assert "replay check failed" in verdict.rejected["lazy"]
    assert "no measurable progress" in verdict.rejected["zero"]
    # A lazy update that is not drawn for a replay passes: the replay probability is what stands between them.
    verdict = _verdict([*honest, candidate("lazy", lazy.delta, 7, 0.0)], shard, state)
    assert "lazy" in verdict.accepted
    assert "lazy" not in verdict.replayed
