"""The model registry and weights files: build, save/load with metadata, bytes round trip, seeded initial weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.models import build, parameter_count
from training.weights import initial_state, load_model, save_model, state_from_bytes, state_to_bytes


def test_an_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet18, smallcnn"):
        build("vgg", 4, 32)
    with pytest.raises(ValueError, match="num_classes"):
        build("smallcnn", 1, 32)


@pytest.mark.parametrize(("name", "params"), [("smallcnn", 24_000), ("resnet18", 11_170_000)])
def test_each_model_gives_logits_per_class(name: str, params: int) -> None:
    net = build(name, 5, 32)
    assert abs(parameter_count(net) - params) / params < 0.01
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    # Only float entries: GroupNorm instead of BatchNorm leaves no integer buffers to average.
    assert all(t.is_floating_point() for t in net.state_dict().values())


def test_resnet18_takes_large_images_through_the_imagenet_stem() -> None:
    net = build("resnet18", 3, 96)
    assert net.stem[0].stride == (2, 2)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 96, 96)).shape == (1, 3)


def test_initial_weights_depend_on_the_seed_only_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = initial_state("smallcnn", 4, 16, seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b = initial_state("smallcnn", 4, 16, seed=1)
    c = initial_state("smallcnn", 4, 16, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    assert all(t.dtype == torch.float32 for t in a.values())


def test_a_saved_model_loads_with_its_metadata(tmp_path: Path) -> None:
    state = initial_state("smallcnn", 3, 24, seed=0)
    state64 = {k: v.double() for k, v in state.items()}
    save_model(tmp_path / "m.safetensors", state64, model="smallcnn", classes=["a", "b", "c"], image_size=24)
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert (info.model, info.classes, info.image_size) == ("smallcnn", ["a", "b", "c"], 24)
    assert set(loaded) == set(state)
    assert all(loaded[k].dtype == torch.float32 for k in loaded)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_weights_file_that_does_not_fit_its_model_is_refused(tmp_path: Path) -> None:
    state = initial_state("smallcnn", 3, 24, seed=0)
    save_model(tmp_path / "m.safetensors", state, model="smallcnn", classes=["a", "b"], image_size=24)
    with pytest.raises(ValueError, match="do not fit smallcnn with 2 classes"):
        load_model(tmp_path / "m.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="unknown model"):
        save_model(tmp_path / "x.safetensors", state, model="vgg", classes=["a", "b"], image_size=24)


def test_state_bytes_round_trip_and_garbage_is_a_value_error() -> None:
    state = initial_state("smallcnn", 4, 16, seed=3)
    back = state_from_bytes(state_to_bytes(state))
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="not a safetensors"):
        state_from_bytes(b"\x00" * 16)
