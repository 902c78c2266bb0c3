"""Aggregation: FedAvg weights by shard size; median and trimmed mean shrug off one update scaled ×100."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from training.aggregate import aggregate, apply


def _updates(n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    centre = {"w": torch.randn(20, 10, generator=gen), "b": torch.randn(10, generator=gen)}
    # Honest participants: the same direction plus a little noise of their own.
    return [{k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in centre.items()} for _ in range(n)]


def _dist(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5)


def test_fedavg_is_the_weighted_mean() -> None:
    ups = _updates(3)
    out = aggregate(ups, [1.0, 2.0, 5.0], "fedavg")
    for k in out:
        torch.testing.assert_close(out[k], (ups[0][k] + 2 * ups[1][k] + 5 * ups[2][k]) / 8)


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_robust_aggregation_resists_one_update_scaled_a_hundredfold(method: str) -> None:
    honest = _updates(5)
    clean = aggregate(honest, [1.0] * 5, "fedavg")
    poisoned = [*honest[:4], {k: 100 * v for k, v in honest[4].items()}]
    robust = aggregate(poisoned, [1.0] * 5, method, trim_fraction=0.2)
    naive = aggregate(poisoned, [1.0] * 5, "fedavg")
    scale = _dist(clean, {k: torch.zeros_like(v) for k, v in clean.items()})
    assert _dist(robust, clean) < 0.1 * scale
    assert _dist(naive, clean) > 10 * scale


def test_median_of_an_even_count_averages_the_middle_pair_and_trimming_drops_both_ends() -> None:
    ups = [{"x": torch.tensor([v])} for v in (1.0, 2.0, 4.0, 100.0)]
    assert aggregate(ups, [1.0] * 4, "median")["x"].item() == 3.0
    ups = [{"x": torch.tensor([v])} for v in (-50.0, 1.0, 2.0, 3.0, 90.0)]
    assert aggregate(ups, [1.0] * 5, "trimmed_mean", trim_fraction=0.2)["x"].item() == 2.0
    assert aggregate(ups, [1.0] * 5, "trimmed_mean", trim_fraction=0.0)["x"].item() == pytest.approx(9.2)


def test_mismatched_or_invalid_inputs_are_refused() -> None:
    ups = _updates(2)
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(ups, [1.0, 1.0], "krum")
    with pytest.raises(ValueError, match="2 updates but 1 weights"):
        aggregate(ups, [1.0], "fedavg")
    with pytest.raises(ValueError, match="not all zero"):
        aggregate(ups, [0.0, 0.0], "fedavg")
    with pytest.raises(ValueError, match="other layers"):
        aggregate([ups[0], {"w": ups[1]["w"]}], [1.0, 1.0], "median")
    with pytest.raises(ValueError, match="shape"):
        aggregate([ups[0], {**ups[1], "b": torch.zeros(3)}], [1.0, 1.0], "median")
    with pytest.raises(ValueError, match="no updates"):
        aggregate([], [], "fedavg")


def test_apply_adds_the_scaled_update_and_copies_integer_buffers() -> None:
    state = {"w": torch.ones(2, 2), "steps": torch.tensor(7)}
    out = apply(state, {"w": torch.full((2, 2), 0.5)}, scale=2.0)
    assert torch.equal(out["w"], torch.full((2, 2), 2.0))
    assert out["steps"].item() == 7
    assert torch.equal(state["w"], torch.ones(2, 2))  # the input is left alone
    with pytest.raises(ValueError, match="does not match the state"):
        apply(state, {"w": torch.zeros(2, 2), "steps": torch.tensor(1)})
    with pytest.raises(ValueError, match="update shape"):
        apply(state, {"w": torch.zeros(3)})
