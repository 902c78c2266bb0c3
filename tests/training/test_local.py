"""Local training: bit-identical for a seed on CPU, different for another seed, and an update of float entries."""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import squares
from training.local import HyperParams, pick_device, train_local
from training.weights import initial_state


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, torch.Tensor], object]:
    return initial_state("smallcnn", 4, 16, seed=0), squares(200, image_size=16, seed=2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_same_seed_gives_a_bit_identical_update_and_another_seed_does_not(setup: tuple, optimizer: str) -> None:
    state, shard = setup
    hp = HyperParams(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.003)
    a = train_local("smallcnn", 4, 16, state, shard, hp, steps=8, seed=5)
    b = train_local("smallcnn", 4, 16, state, shard, hp, steps=8, seed=5)
    c = train_local("smallcnn", 4, 16, state, shard, hp, steps=8, seed=6)
    assert set(a.delta) == set(state)
    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
    assert a.metrics["loss_end"] == b.metrics["loss_end"]
    assert any(not torch.equal(a.delta[k], c.delta[k]) for k in a.delta)
    assert all(not t.requires_grad for t in a.delta.values())


def test_training_lowers_the_shard_loss_and_reports_its_metrics(setup: tuple) -> None:
    state, shard = setup
    steps_seen = []
    result = train_local(
        "smallcnn",
        4,
        16,
        state,
        shard,
        HyperParams(batch_size=16),
        steps=20,
        seed=1,
        progress=lambda done, total: steps_seen.append((done, total)),
    )
    m = result.metrics
    assert m["loss_end"] < m["loss_start"]
    assert (m["steps"], m["samples"]) == (20.0, 320.0)
    assert m["seconds"] > 0
    assert steps_seen == [(k, 20) for k in range(1, 21)]
    assert all(d.dtype == torch.float32 and d.device.type == "cpu" for d in result.delta.values())


def test_the_global_determinism_setting_is_left_as_it_was(setup: tuple) -> None:
    state, shard = setup
    assert not torch.are_deterministic_algorithms_enabled()
    train_local("smallcnn", 4, 16, state, shard, HyperParams(), steps=1, seed=0)
    assert not torch.are_deterministic_algorithms_enabled()


def test_bad_inputs_are_refused(setup: tuple) -> None:
    state, shard = setup
    with pytest.raises(ValueError, match="steps"):
        train_local("smallcnn", 4, 16, state, shard, HyperParams(), steps=0, seed=0)
    with pytest.raises(ValueError, match="shard crops are 16², the model expects 32²"):
        train_local("smallcnn", 4, 32, state, shard, HyperParams(), steps=1, seed=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        HyperParams(optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        HyperParams(lr=0)
    assert pick_device() in ("cpu", "cuda")
