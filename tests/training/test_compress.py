"""Update compression: round-trip error within each method's bound, exact byte counts, error feedback, and
payloads from volunteers that are garbage, truncated or hostile."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from torch import Tensor

from training.compress import (
    COMPRESSIONS,
    HEADER_BYTES,
    CompressionSpec,
    compress,
    decompress,
    expected_bytes,
    layer_header_bytes,
    payload_info,
)
from training.weights import initial_state

SHAPES = {"conv.weight": (32, 16, 3, 3), "conv.bias": (32,), "fc.weight": (10, 64), "scalar": (), "tiny": (3,)}


def _delta(seed: int, scale: float = 0.01) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) * scale for name, shape in SHAPES.items()}


def _zeros() -> dict[str, Tensor]:
    return {name: torch.zeros(shape) for name, shape in SHAPES.items()}


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_payload_length_is_exactly_what_the_layer_sizes_give(name: str) -> None:
    spec = CompressionSpec(name, topk_fraction=0.05, rank=2)
    payload, _ = compress(_delta(0), spec, _zeros() if spec.keeps_residual else None)
    assert len(payload) == expected_bytes(SHAPES, spec)
    info = payload_info(payload)
    assert info["compression"] == name
    assert info["bytes"] == len(payload)
    assert info["layer_count"] == len(SHAPES)
    assert HEADER_BYTES + sum(layer["bytes"] for layer in info["layers"]) == len(payload)


def test_byte_formulas_for_a_conv_layer_by_hand() -> None:
    # conv.weight: 4608 elements, header 2 + 11 + 1 + 1 + 4·4 + 1 = 32 bytes.
    head = layer_header_bytes("conv.weight", 4)
    assert head == 32
    shape = {"conv.weight": (32, 16, 3, 3)}
    assert expected_bytes(shape, CompressionSpec("none")) == HEADER_BYTES + head + 4 * 4608
    assert expected_bytes(shape, CompressionSpec("fp16")) == HEADER_BYTES + head + 2 * 4608
    assert expected_bytes(shape, CompressionSpec("int8")) == HEADER_BYTES + head + 4 + 4608
    k = math.ceil(0.01 * 4608)  # 47
    assert expected_bytes(shape, CompressionSpec("topk", topk_fraction=0.01)) == HEADER_BYTES + head + 4 + 8 * k
    # PowerSGD sees the layer as 32 × 144; rank 4 sends P (32×4) and Q (144×4).
    assert expected_bytes(shape, CompressionSpec("powersgd", rank=4)) == HEADER_BYTES + head + 2 + 4 * 4 * (32 + 144)


def test_a_real_model_update_compresses_by_the_expected_factors() -> None:
    state = initial_state("smallcnn", 6, 32, seed=0)
    delta = {k: torch.randn_like(v) * 0.01 for k, v in state.items()}
    sizes = {}
    for name in COMPRESSIONS:
        spec = CompressionSpec(name)
        payload, _ = compress(
            delta, spec, {k: torch.zeros_like(v) for k, v in delta.items()} if spec.keeps_residual else None
        )
        assert len(payload) == expected_bytes({k: tuple(v.shape) for k, v in delta.items()}, spec)
        sizes[name] = len(payload)
    assert sizes["none"] > 4 * 24_000
    assert 1.9 < sizes["none"] / sizes["fp16"] < 2.0
    assert 3.8 < sizes["none"] / sizes["int8"] < 4.0
    assert sizes["none"] / sizes["topk"] > 35
    assert sizes["none"] / sizes["powersgd"] > 8


def _rel(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a)
    den = sum(float(b[k].double().norm() ** 2) for k in a)
    return math.sqrt(num / den)


def test_lossless_and_quantised_round_trips_stay_within_their_bounds() -> None:
    delta = _delta(1)
    out = decompress(compress(delta, CompressionSpec("none"))[0])
    assert all(torch.equal(out[k], delta[k]) for k in delta)
    out = decompress(compress(delta, CompressionSpec("fp16"))[0])
    for k in delta:  # fp16: relative 2⁻¹¹ in the normal range, absolute 2⁻²⁵ below it
        assert bool(((out[k] - delta[k]).abs() <= delta[k].abs() * 2**-11 + 2**-25).all())
    out = decompress(compress(delta, CompressionSpec("int8"))[0])
    for k in delta:  # int8: at most half a step of the layer's scale (max |x| / 127)
        step = float(delta[k].abs().max()) / 127
        assert float((out[k] - delta[k]).abs().max()) <= step / 2 * (1 + 1e-5)


def test_topk_keeps_the_largest_coordinates_of_each_layer_exactly() -> None:
    delta = _delta(2)
    out = decompress(compress(delta, CompressionSpec("topk", topk_fraction=0.1), _zeros())[0])
    w, sent = delta["conv.weight"].reshape(-1), out["conv.weight"].reshape(-1)
    k = math.ceil(0.1 * w.numel())
    top = torch.topk(w.abs(), k).indices
    assert torch.equal(sent[top], w[top])
    assert int((sent != 0).sum()) == k
    # A 3-element layer costs less dense (12 bytes) than as top-k (4 + 8 = 12 is not less): sent whole.
    assert torch.equal(out["tiny"], delta["tiny"])
    assert torch.equal(out["scalar"], delta["scalar"])


def test_powersgd_recovers_a_low_rank_update_and_error_is_bounded_otherwise() -> None:
    gen = torch.Generator().manual_seed(3)
    low = (torch.randn(32, 2, generator=gen) @ torch.randn(2, 144, generator=gen)).reshape(32, 16, 3, 3)
    delta = {**_delta(3), "conv.weight": low}
    out = decompress(compress(delta, CompressionSpec("powersgd", rank=2), _zeros(), seed=5)[0])
    assert float((out["conv.weight"] - low).norm() / low.norm()) < 1e-4
    # Full-rank noise: the rank-2 approximation can only lose energy, never add it.
    noisy = _delta(4)
    out = decompress(compress(noisy, CompressionSpec("powersgd", rank=2), _zeros(), seed=5)[0])
    assert float(out["fc.weight"].norm()) <= float(noisy["fc.weight"].norm()) * (1 + 1e-5)
    assert torch.equal(out["conv.bias"], noisy["conv.bias"])  # 1-D layers go dense


@pytest.mark.parametrize("name", ["topk", "powersgd"])
def test_error_feedback_carries_what_was_not_sent(name: str) -> None:
    spec = CompressionSpec(name, topk_fraction=0.02, rank=1)
    residual = _zeros()
    sent_sum, delta_sum = _zeros(), _zeros()
    for round_ in range(6):
        delta = _delta(10 + round_)
        payload, new_residual = compress(delta, spec, residual, seed=round_)
        assert new_residual is not None
        residual = new_residual
        sent = decompress(payload)
        for k in delta:
            sent_sum[k] += sent[k]
            delta_sum[k] += delta[k]
    assert any(float(r.abs().max()) > 0 for r in residual.values())
    for k in delta_sum:
        torch.testing.assert_close(sent_sum[k] + residual[k], delta_sum[k], rtol=0, atol=1e-6)


def test_methods_without_error_feedback_return_no_residual_and_refuse_one() -> None:
    assert compress(_delta(0), CompressionSpec("int8"))[1] is None
    with pytest.raises(ValueError, match="keeps no residual"):
        compress(_delta(0), CompressionSpec("fp16"), _zeros())


def test_fp16_overflow_falls_back_to_float32_for_that_layer() -> None:
    delta = {**_delta(0), "fc.weight": torch.full((10, 64), 1e6)}
    payload, _ = compress(delta, CompressionSpec("fp16"))
    assert torch.equal(decompress(payload)["fc.weight"], delta["fc.weight"])
    layer = next(x for x in payload_info(payload)["layers"] if x["name"] == "fc.weight")
    assert layer["encoding"] == "dense"


def test_non_finite_updates_and_bad_specs_are_refused_when_compressing() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        compress({**_delta(0), "tiny": torch.tensor([1.0, float("nan"), 0.0])}, CompressionSpec("int8"))
    with pytest.raises(ValueError, match="unknown compression"):
        CompressionSpec("zip")
    with pytest.raises(ValueError, match="topk_fraction"):
        CompressionSpec("topk", topk_fraction=0.0)


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_every_truncation_of_a_payload_is_a_value_error(name: str) -> None:
    spec = CompressionSpec(name, topk_fraction=0.05, rank=2)
    small = {"a.weight": torch.randn(4, 6), "a.bias": torch.randn(4)}
    payload, _ = compress(
        small, spec, {k: torch.zeros_like(v) for k, v in small.items()} if spec.keeps_residual else None
    )
    for cut in range(len(payload)):
        with pytest.raises(ValueError, match=r"truncated|bad magic|unexpected bytes"):
            decompress(payload[:cut])
    with pytest.raises(ValueError, match="unexpected bytes after the last layer"):
        decompress(payload + b"\0")


def _one_layer(method: int, name: bytes, shape: tuple[int, ...], encoding: int, body: bytes, count: int = 1) -> bytes:
    layer = struct.pack("<H", len(name)) + name + struct.pack("<BB", 0, len(shape))
    layer += struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<B", encoding) + body
    return b"HWUP" + struct.pack("<BBI", 1, method, count) + layer


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "bad magic"),
        (b"PK\x03\x04" + b"\0" * 40, "bad magic"),
        (b"HWUP" + struct.pack("<BBI", 2, 0, 0), "unsupported payload version 2"),
        (b"HWUP" + struct.pack("<BBI", 1, 9, 0), "unknown compression id 9"),
        (b"HWUP" + struct.pack("<BBI", 1, 0, 10**6), "too many layers"),
        # 65536⁴ float32 elements declared: refused before anything is allocated.
        (_one_layer(3, b"w", (65535, 65535, 65535, 65535), 3, struct.pack("<I", 1)), "more than"),
        (_one_layer(0, b"w", (4,), 3, b""), "encoding topk is not allowed in a none payload"),
        (_one_layer(0, b"w", (4,), 7, b""), "unknown encoding id 7"),
        (_one_layer(0, b"\xff\xfe", (1,), 0, b"\0" * 4), "not UTF-8"),
        (_one_layer(0, b"w", (1,) * 9, 0, b"\0" * 4), "9 dimensions"),
        (_one_layer(3, b"w", (4,), 3, struct.pack("<I", 5) + b"\0" * 40), "top-k count 5 outside 1..4"),
        (_one_layer(3, b"w", (4,), 3, struct.pack("<I2i2f", 2, 3, 1, 1.0, 2.0)), "not strictly ascending"),
        (_one_layer(3, b"w", (4,), 3, struct.pack("<I2i2f", 2, 1, 4, 1.0, 2.0)), "index outside 0..3"),
        (_one_layer(3, b"w", (4,), 3, struct.pack("<I2i2f", 2, -1, 2, 1.0, 2.0)), "index outside 0..3"),
        (_one_layer(2, b"w", (2,), 2, struct.pack("<f", float("nan")) + b"\1\1"), "int8 scale nan"),
        (_one_layer(2, b"w", (2,), 2, struct.pack("<f", 1.0) + b"\x80\1"), "-128"),
        (_one_layer(4, b"w", (4, 3), 4, struct.pack("<H", 9) + b"\0" * 300), "rank 9 invalid"),
        (_one_layer(4, b"w", (12,), 4, struct.pack("<H", 1) + b"\0" * 100), "rank 1 invalid"),
        (
            _one_layer(0, b"w", (1,), 0, b"\0" * 4, count=2) + _one_layer(0, b"w", (1,), 0, b"\0" * 4)[10:],
            "appears twice",
        ),
    ],
)
def test_hostile_payloads_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decompress(payload)


@pytest.mark.parametrize("name", COMPRESSIONS)
def test_corrupted_payloads_fail_only_with_value_errors(name: str) -> None:
    # Bytes flipped anywhere (header, names, dims, counts, values): decoding either succeeds with tensors of the
    # declared shapes or raises ValueError — never another exception, never a different shape.
    spec = CompressionSpec(name, topk_fraction=0.05, rank=2)
    good, _ = compress(_delta(0), spec, _zeros() if spec.keeps_residual else None)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        data = bytearray(good)
        for pos in torch.randint(0, len(data), (3,), generator=gen).tolist():
            data[pos] = int(torch.randint(0, 256, (1,), generator=gen))
        try:
            out = decompress(bytes(data))
        except ValueError:
            continue
        info = payload_info(bytes(data))
        assert [tuple(t.shape) for t in out.values()] == [tuple(layer["shape"]) for layer in info["layers"]]
