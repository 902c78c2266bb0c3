"""Update compression, layer by layer, into a self-describing binary payload whose length is the bytes sent.

Payload (little-endian), version 1:

    magic "HWUP" | version u8 = 1 | method u8 | layer count u32
    per layer: name length u16 | name (UTF-8) | dtype u8 | ndim u8 | dims u32 × ndim | encoding u8 | body

Bodies (n = elements of the layer):

    dense    0   n × f32                                   4n bytes
    fp16     1   n × f16                                   2n
    int8     2   scale f32 | n × i8 (value = q × scale)    4 + n
    topk     3   k u32 | k × index u32 (ascending) | k × f32 values      4 + 8k
    lowrank  4   rank u16 | P rows×r f32 | Q cols×r f32 (value = P Qᵀ, the layer as rows × cols)   2 + 4r(rows+cols)

A method may send a layer dense when that is fewer bytes (top-k of a tiny bias, rank-r of a thin matrix) or when
the encoding cannot hold it (fp16 overflow). Nothing is pickled; `decompress` bounds every size before allocating.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from training.wire import Reader

COMPRESSIONS = ("none", "fp16", "int8", "topk", "powersgd")
MAGIC = b"HWUP"
VERSION = 1
ENCODINGS = ("dense", "fp16", "int8", "topk", "lowrank")
# Which layer encodings each method may use: its own (COMPRESSIONS[i] encodes as ENCODINGS[i]) and dense, every
# method's fallback.
ALLOWED = {method: {"dense", own} for method, own in zip(COMPRESSIONS, ENCODINGS, strict=True)}
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
HEADER_BYTES = 4 + 1 + 1 + 4
# Bounds for untrusted payloads: a ResNet-18 has 62 layers and 11.2 M elements.
MAX_LAYERS = 4096
MAX_NAME_BYTES = 512
MAX_NDIM = 8
MAX_ELEMENTS = 256 * 1024 * 1024
MAX_RANK = 1024
FP16_MAX = 65504.0


@dataclass
class CompressionSpec:
    """Method and its knobs: the fraction of coordinates top-k sends per layer, PowerSGD's rank."""

    name: str = "none"
    topk_fraction: float = 0.01
    rank: int = 4

    def __post_init__(self) -> None:
        if self.name not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.name!r}; choose one of: {', '.join(COMPRESSIONS)}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be within (0, 1], got {self.topk_fraction}")
        if not 1 <= self.rank <= MAX_RANK:
            raise ValueError(f"rank must be within 1..{MAX_RANK}, got {self.rank}")

    @property
    def keeps_residual(self) -> bool:
        """Whether the method uses error feedback (the node keeps what it did not send for the next round)."""
        return self.name in ("topk", "powersgd")


def layer_header_bytes(name: str, ndim: int) -> int:
    """Bytes of a layer record before its body: name length, name, dtype, ndim, dims, encoding."""
    return 2 + len(name.encode()) + 1 + 1 + 4 * ndim + 1


def topk_count(numel: int, fraction: float) -> int:
    """Coordinates top-k keeps in a layer of `numel` elements: ceil(fraction × numel), at least 1."""
    return max(1, min(numel, math.ceil(fraction * numel)))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """How PowerSGD sees a layer: rows = first dimension, cols = the product of the others (conv: out × in·kh·kw)."""
    rows = shape[0] if shape else 1
    return rows, math.prod(shape[1:]) if len(shape) > 1 else 1


def body_bytes(encoding: str, numel: int, *, k: int = 0, rank: int = 0, rows: int = 0, cols: int = 0) -> int:
    """Bytes of a layer body in `encoding` (the formulas of the module docstring)."""
    if encoding == "dense":
        return 4 * numel
    if encoding == "fp16":
        return 2 * numel
    if encoding == "int8":
        return 4 + numel
    if encoding == "topk":
        return 4 + 8 * k
    if encoding == "lowrank":
        return 2 + 4 * rank * (rows + cols)
    raise ValueError(f"unknown encoding {encoding!r}")


def planned_encoding(shape: tuple[int, ...], spec: CompressionSpec) -> str:
    """The encoding `compress` uses for a layer of `shape` (before a value-dependent fallback: fp16 overflow)."""
    numel = math.prod(shape)
    dense = body_bytes("dense", numel)
    if spec.name == "fp16":
        return "fp16"
    if spec.name == "int8":
        return "int8"
    if spec.name == "topk":
        k = topk_count(numel, spec.topk_fraction)
        return "topk" if body_bytes("topk", numel, k=k) < dense else "dense"
    if spec.name == "powersgd" and len(shape) >= 2:
        rows, cols = matrix_shape(shape)
        rank = min(spec.rank, rows, cols)
        return "lowrank" if body_bytes("lowrank", numel, rank=rank, rows=rows, cols=cols) < dense else "dense"
    return "dense"


def expected_bytes(shapes: dict[str, tuple[int, ...]], spec: CompressionSpec) -> int:
    """len(payload) that `compress` produces for layers of these shapes (no fp16 overflow), computed from sizes only."""
    total = HEADER_BYTES
    for name, shape in shapes.items():
        numel = math.prod(shape)
        encoding = planned_encoding(shape, spec)
        rows, cols = matrix_shape(shape)
        total += layer_header_bytes(name, len(shape)) + body_bytes(
            encoding,
            numel,
            k=topk_count(numel, spec.topk_fraction),
            rank=min(spec.rank, rows, cols),
            rows=rows,
            cols=cols,
        )
    return total


def _orthonormalize(p: Tensor) -> Tensor:
    # Gram-Schmidt on columns (as PowerSGD does); a column that vanishes stays zero instead of becoming NaN.
    q = p.clone()
    for j in range(q.shape[1]):
        col = q[:, j]
        for i in range(j):
            col -= torch.dot(q[:, i], col) * q[:, i]
        norm = torch.linalg.vector_norm(col)
        q[:, j] = col / norm if norm > 1e-30 else torch.zeros_like(col)
    return q


def _f32(t: Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def compress(
    delta: dict[str, Tensor],
    spec: CompressionSpec,
    residual: dict[str, Tensor] | None = None,
    seed: int = 0,
) -> tuple[bytes, dict[str, Tensor] | None]:
    """Encode an update; returns (payload, new residual). len(payload) is exactly the bytes sent.

    top-k and PowerSGD use error feedback: they compress delta + `residual` (the part of earlier updates not yet
    sent) and return the new residual = that sum − what was sent; the other methods return None. `seed` draws
    PowerSGD's random projection (use the round number).
    """
    if residual is not None and not spec.keeps_residual:
        raise ValueError(f"compression {spec.name!r} keeps no residual; pass residual=None")
    if residual is not None and set(residual) != set(delta):
        raise ValueError("residual layers differ from the update's")
    if len(delta) > MAX_LAYERS:
        raise ValueError(f"too many layers ({len(delta)} > {MAX_LAYERS})")
    parts = [MAGIC, struct.pack("<BBI", VERSION, COMPRESSIONS.index(spec.name), len(delta))]
    new_residual: dict[str, Tensor] | None = {} if spec.keeps_residual else None
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in delta.items():
        if not tensor.is_floating_point() or tensor.dtype not in DTYPES:
            raise ValueError(f"layer {name}: dtype {tensor.dtype} is not a float type")
        shape = tuple(int(d) for d in tensor.shape)
        name_bytes = name.encode()
        if not 0 < len(name_bytes) <= MAX_NAME_BYTES or len(shape) > MAX_NDIM:
            raise ValueError(f"layer {name!r}: name or number of dimensions out of bounds")
        x = tensor.detach().to("cpu", torch.float32).reshape(-1)
        if residual is not None:
            x = x + residual[name].detach().to("cpu", torch.float32).reshape(-1)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"layer {name}: non-finite values")
        encoding = planned_encoding(shape, spec)
        if encoding == "fp16" and x.numel() and float(x.abs().max()) > FP16_MAX:
            encoding = "dense"
        sent = x
        if encoding == "dense":
            body = _f32(x)
        elif encoding == "fp16":
            half = x.to(torch.float16)
            body = half.numpy().tobytes()
        elif encoding == "int8":
            peak = float(x.abs().max()) if x.numel() else 0.0
            scale = peak / 127.0
            q = torch.zeros_like(x, dtype=torch.int8) if scale == 0.0 else torch.round(x / scale).clamp(-127, 127)
            body = struct.pack("<f", scale) + q.to(torch.int8).numpy().tobytes()
        elif encoding == "topk":
            k = topk_count(x.numel(), spec.topk_fraction)
            # Ties broken by index so the choice is the same on every machine.
            order = torch.argsort(x.abs(), descending=True, stable=True)[:k]
            idx = order.sort().values
            values = x[idx]
            body = struct.pack("<I", k) + idx.to(torch.int32).numpy().tobytes() + _f32(values)
            sent = torch.zeros_like(x)
            sent[idx] = values
        else:  # lowrank (PowerSGD, Vogels et al. 2019: one power iteration from a random Q)
            rows, cols = matrix_shape(shape)
            rank = min(spec.rank, rows, cols)
            m = x.reshape(rows, cols)
            p = _orthonormalize(m @ torch.randn(cols, rank, generator=gen))
            q = m.T @ p
            body = struct.pack("<H", rank) + _f32(p) + _f32(q)
            # What the receiver reconstructs, from the float32 bytes it gets.
            sent = (p @ q.T).reshape(-1)
        if new_residual is not None:
            new_residual[name] = (x - sent).reshape(shape)
        dims = struct.pack(f"<{len(shape)}I", *shape)
        parts += [
            struct.pack("<H", len(name_bytes)),
            name_bytes,
            struct.pack("<BB", DTYPES.index(tensor.dtype), len(shape)),
            dims,
            struct.pack("<B", ENCODINGS.index(encoding)),
            body,
        ]
    return b"".join(parts), new_residual


@dataclass
class _Layer:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    encoding: str
    body: memoryview
    record_bytes: int


def _parse(
    payload: bytes, max_elements: int, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[str, list[_Layer]]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    r = Reader(bytes(payload))
    if r.remaining < HEADER_BYTES or bytes(r.take(4, "magic")) != MAGIC:
        raise ValueError("not a Hashwork update payload (bad magic)")
    version, method_id, count = r.unpack("<BBI", "header")
    if version != VERSION:
        raise ValueError(f"unsupported payload version {version} (this reader knows {VERSION})")
    if method_id >= len(COMPRESSIONS):
        raise ValueError(f"unknown compression id {method_id}")
    method = COMPRESSIONS[method_id]
    if count > MAX_LAYERS:
        raise ValueError(f"too many layers ({count} > {MAX_LAYERS})")
    layers: list[_Layer] = []
    seen: set[str] = set()
    elements = 0
    for n in range(count):
        start = r.pos
        (name_len,) = r.unpack("<H", f"layer {n} name length")
        if not 0 < name_len <= MAX_NAME_BYTES:
            raise ValueError(f"layer {n}: name length {name_len} outside 1..{MAX_NAME_BYTES}")
        try:
            name = bytes(r.take(name_len, f"layer {n} name")).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"layer {n}: name is not UTF-8") from None
        if name in seen:
            raise ValueError(f"layer {name!r} appears twice")
        seen.add(name)
        dtype_id, ndim = r.unpack("<BB", f"layer {name} dtype/ndim")
        if dtype_id >= len(DTYPES):
            raise ValueError(f"layer {name}: unknown dtype id {dtype_id}")
        if ndim > MAX_NDIM:
            raise ValueError(f"layer {name}: {ndim} dimensions > {MAX_NDIM}")
        shape = tuple(int(d) for d in r.unpack(f"<{ndim}I", f"layer {name} dims"))
        if shapes is not None:
            # Before anything of the declared size exists: a layer the model does not have, or of another shape,
            # is refused here (a top-k layer of k = 1 could otherwise declare 256 M elements and have them zeroed).
            if name not in shapes:
                raise ValueError(f"layer {name!r} is not a layer of the model")
            if shape != tuple(shapes[name]):
                raise ValueError(f"layer {name}: shape {shape}, the model has {tuple(shapes[name])}")
        numel = math.prod(shape)
        elements += numel
        if elements > max_elements:
            raise ValueError(f"payload declares more than {max_elements} elements")
        (encoding_id,) = r.unpack("<B", f"layer {name} encoding")
        if encoding_id >= len(ENCODINGS):
            raise ValueError(f"layer {name}: unknown encoding id {encoding_id}")
        encoding = ENCODINGS[encoding_id]
        if encoding not in ALLOWED[method]:
            raise ValueError(f"layer {name}: encoding {encoding} is not allowed in a {method} payload")
        if encoding == "topk":
            (k,) = r.peek("<I", f"layer {name} k")
            if not 1 <= k <= numel:
                raise ValueError(f"layer {name}: top-k count {k} outside 1..{numel}")
            size = body_bytes("topk", numel, k=k)
        elif encoding == "lowrank":
            (rank,) = r.peek("<H", f"layer {name} rank")
            rows, cols = matrix_shape(shape)
            if len(shape) < 2 or not 1 <= rank <= min(rows, cols, MAX_RANK):
                raise ValueError(f"layer {name}: rank {rank} invalid for shape {shape}")
            size = body_bytes("lowrank", numel, rank=rank, rows=rows, cols=cols)
        else:
            size = body_bytes(encoding, numel)
        body = r.take(size, f"layer {name} body")
        layers.append(_Layer(name, shape, DTYPES[dtype_id], encoding, body, r.pos - start))
    if r.remaining:
        raise ValueError(f"{r.remaining} unexpected bytes after the last layer")
    if shapes is not None and len(seen) != len(shapes):
        missing = sorted(set(shapes) - seen)
        raise ValueError(f"layers differ from the model: missing {missing[:5]}")
    return method, layers


def _decode(layer: _Layer) -> Tensor:
    numel = math.prod(layer.shape)
    body = layer.body
    if layer.encoding == "dense":
        flat = torch.frombuffer(bytearray(body), dtype=torch.float32) if numel else torch.zeros(0)
    elif layer.encoding == "fp16":
        flat = torch.frombuffer(bytearray(body), dtype=torch.float16).float() if numel else torch.zeros(0)
    elif layer.encoding == "int8":
        (scale,) = struct.unpack("<f", body[:4])
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"layer {layer.name}: int8 scale {scale} is not a finite non-negative number")
        q = torch.frombuffer(bytearray(body[4:]), dtype=torch.int8) if numel else torch.zeros(0, dtype=torch.int8)
        if bool((q == -128).any()):
            raise ValueError(f"layer {layer.name}: int8 value -128 outside the symmetric range")
        flat = q.float() * scale
    elif layer.encoding == "topk":
        (k,) = struct.unpack("<I", body[:4])
        idx = torch.frombuffer(bytearray(body[4 : 4 + 4 * k]), dtype=torch.int32).to(torch.int64)
        values = torch.frombuffer(bytearray(body[4 + 4 * k :]), dtype=torch.float32)
        if bool((idx < 0).any()) or bool((idx >= numel).any()):
            raise ValueError(f"layer {layer.name}: top-k index outside 0..{numel - 1}")
        if k > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError(f"layer {layer.name}: top-k indices are not strictly ascending")
        flat = torch.zeros(numel)
        flat[idx] = values
    else:
        (rank,) = struct.unpack("<H", body[:2])
        rows, cols = matrix_shape(layer.shape)
        p = torch.frombuffer(bytearray(body[2 : 2 + 4 * rows * rank]), dtype=torch.float32).reshape(rows, rank)
        q = torch.frombuffer(bytearray(body[2 + 4 * rows * rank :]), dtype=torch.float32).reshape(cols, rank)
        flat = (p @ q.T).reshape(-1)
    return flat.reshape(layer.shape).to(layer.dtype)


def decompress(
    payload: bytes, *, max_elements: int | None = None, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, Tensor]:
    """The update a payload carries (ValueError naming the problem for a malformed, truncated or hostile payload).

    With `shapes` (the receiving model's layers: name → shape, e.g. `verify.update_shapes(state)`), every layer
    must be one of them with its shape, and all must be there, checked from the headers before anything is
    allocated; `max_elements` (default: the model's element count with shapes, MAX_ELEMENTS without) bounds
    the total declared. Values are not judged here: a NaN travels through and `verify.check_update` rejects it.
    """
    if max_elements is None:
        max_elements = sum(math.prod(shape) for shape in shapes.values()) if shapes is not None else MAX_ELEMENTS
    _, layers = _parse(payload, max_elements, shapes)
    return {layer.name: _decode(layer) for layer in layers}


def payload_info(payload: bytes) -> dict[str, Any]:
    """What a payload holds, without decoding values: compression, bytes, elements, and per layer
    name/shape/dtype/encoding/bytes (ValueError as `decompress` for a malformed payload)."""
    method, layers = _parse(payload, MAX_ELEMENTS)
    return {
        "compression": method,
        "bytes": len(payload),
        "elements": sum(math.prod(layer.shape) for layer in layers),
        "layer_count": len(layers),
        "layers": [
            {
                "name": layer.name,
                "shape": list(layer.shape),
                "dtype": str(layer.dtype).removeprefix("torch."),
                "encoding": layer.encoding,
                "bytes": layer.record_bytes,
            }
            for layer in layers
        ],
    }
