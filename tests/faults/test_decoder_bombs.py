"""Item 3 of the faults issue: every decoder a replica's data reaches refuses a declared size it cannot have before
allocating it (an RLE's size, a PNG's header, a zip's directory and ratios, a top-k layer's shape); the honest
input still decodes."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from marketplace.jobs.kinds.render import chunk_unpack, zip_limits
from synthetic import chunk, png16
from synthetic.labels import decode_rle, encode_rle
from tests.faults.chunks import (
    many_entries_zip,
    payload_of,
    png_header_bomb,
    rle_bomb,
    small_render_spec,
    write_chunk,
    zip_bomb_bytes,
    zip_bytes,
)
from training.compress import MAGIC, VERSION, CompressionSpec, compress, decompress
from training.verify import update_shapes

# Far below any bomb here (a 4000² mask is 16 MB, a 4000² 16-bit RGB image 96 MB, the top-k layer 1 GiB).
PEAK_BYTES = 2 << 20


def refused_cheaply(call: Callable[[], Any], match: str) -> None:
    """`call` raises ValueError matching `match`, within a second and PEAK_BYTES of traced memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < PEAK_BYTES, peak


# --- COCO RLE ---------------------------------------------------------------------------------------------------


def test_an_rle_declaring_a_4000_by_4000_mask_is_refused_before_it_is_decoded() -> None:
    bomb = rle_bomb(4000, 4000)
    assert len(bomb["counts"]) < 10  # a few bytes ask for 16 MB
    refused_cheaply(lambda: decode_rle(bomb, (32, 32)), r"size \[4000, 4000\] is not the image's \[32, 32\]")


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ({"size": [100_000, 100_000], "counts": "0"}, "not \\[height, width\\] within"),
        ({"size": [16, "16"], "counts": "0"}, "not \\[height, width\\]"),
        ({"size": [16, 16], "counts": b"0P8"}, "ASCII string"),
        ({"size": [16, 16], "counts": "1"}, "do not cover"),
        # Runs 0, 256 and -16: a negative run would make pycocotools write before its buffer.
        ({"size": [16, 16], "counts": "0P8@"}, "do not cover"),
        ({"size": [16, 16], "counts": "0o"}, "middle of a run"),
        ({"size": [16, 16], "counts": "0~"}, "not a COCO compressed RLE string"),
        (["not", "a", "dict"], "must be an RLE object"),
    ],
)
def test_a_malformed_rle_is_a_value_error_naming_the_problem(rle: Any, match: str) -> None:
    refused_cheaply(lambda: decode_rle(rle), match)


def test_an_honest_rle_still_decodes_to_its_mask() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[3:9, 20:31] = True
    assert np.array_equal(decode_rle(encode_rle(mask), (32, 32)), mask)


# --- PNG --------------------------------------------------------------------------------------------------------


def test_a_png16_header_claiming_4000_by_4000_is_refused_before_inflating() -> None:
    bomb = png_header_bomb(4000, 4000)
    assert len(bomb) < 200_000  # inflates to 96 MB
    refused_cheaply(lambda: png16.decode(bomb, shape=(32, 32)), "PNG is 4000×4000, expected 32×32")
    refused_cheaply(lambda: png16.decode(bomb, max_pixels=1000), "more than 1000")


@pytest.mark.parametrize("rgb16", [True, False])
def test_read_png_refuses_a_header_of_another_size_before_decoding(tmp_path: Path, rgb16: bool) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb(4000, 4000, rgb16=rgb16))
    refused_cheaply(lambda: chunk.read_png(path, shape=(32, 32)), "PNG is 4000×4000, expected 32×32")


@pytest.mark.parametrize(("side", "match"), [(20_000, "decompression bomb"), (10_000, "decompression bomb")])
def test_pillows_bomb_error_and_warning_are_value_errors_without_a_shape(tmp_path: Path, side: int, match: str) -> None:
    # 400 M pixels: Pillow's DecompressionBombError; 100 M: its warning, made an error.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb(side, side, rgb16=False, fill=False))
    refused_cheaply(lambda: chunk.read_png(path), match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GIF89a not a png at all", "not a PNG file"),
        (png_header_bomb(32, 32, rgb16=False)[:45], "broken or truncated"),
        (png16.encode(np.zeros((4, 4, 3), dtype=np.uint16))[:40], "truncated|IEND"),
    ],
)
def test_a_file_that_is_not_a_whole_png_is_a_value_error(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(data)
    refused_cheaply(lambda: chunk.read_png(path, shape=(32, 32)), match)


def test_a_png16_whose_image_data_does_not_inflate_is_a_value_error() -> None:
    data = bytearray(png16.encode(np.ones((8, 8, 3), dtype=np.uint16)))
    start = data.index(b"IDAT") + 4
    data[start : start + 4] = b"\xff\xff\xff\xff"
    # Keep the CRC right so that only the deflate stream is broken.
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    crc = png16.zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = struct.pack(">I", crc)
    refused_cheaply(lambda: png16.decode(bytes(data), shape=(8, 8)), "does not inflate")


def test_honest_pngs_of_the_expected_size_still_read(tmp_path: Path) -> None:
    pixels = np.arange(32 * 32 * 3, dtype=np.uint16).reshape(32, 32, 3)
    chunk.write_png(tmp_path / "n.png", pixels)
    chunk.write_png(tmp_path / "i.png", pixels[..., 0])
    assert np.array_equal(chunk.read_png(tmp_path / "n.png", shape=(32, 32)), pixels)
    assert np.array_equal(chunk.read_png(tmp_path / "i.png", shape=(32, 32)), pixels[..., 0])


# --- zip --------------------------------------------------------------------------------------------------------


@pytest.fixture
def unpack(settings: Any, tmp_path: Path) -> Iterator[Callable[[bytes], Path]]:
    """chunk_unpack of a result of a 2-image task whose artifact is these bytes (a real file, as in storage)."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    payload = payload_of(small_render_spec())
    made: list[int] = []

    def run(data: bytes) -> Path:
        made.append(len(made))
        artifact = tmp_path / f"artifact-{len(made)}.zip"
        artifact.write_bytes(data)
        result = SimpleNamespace(
            id=f"r{len(made)}",
            artifact=SimpleNamespace(open=lambda mode: artifact.open(mode)),
            assignment=SimpleNamespace(task=SimpleNamespace(payload=payload)),
        )
        return chunk_unpack(result)

    yield run
    # Whatever was refused left nothing behind, not even a partial folder.
    unpacked = tmp_path / "media" / "unpacked"
    assert not unpacked.exists() or all(p.name.startswith("r") and "." not in p.name for p in unpacked.iterdir())


def _lying_directory(entries: int, directory_bytes: int) -> bytes:
    """A small honest zip whose end-of-central-directory record claims `entries` in `directory_bytes`."""
    data = bytearray(zip_bytes_of({"chunk.json": b"{}"}))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HHI", data, end + 8, entries & 0xFFFF, entries & 0xFFFF, directory_bytes)
    return bytes(data)


def zip_bytes_of(members: dict[str, bytes], **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", **kwargs) as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def test_a_zip_declaring_more_entries_than_a_chunk_has_is_refused_from_its_end_record(
    unpack: Callable[[bytes], Path],
) -> None:
    limits = zip_limits(payload_of(small_render_spec()))
    assert limits.entries == 2 * 6 * 2 + 16
    refused_cheaply(lambda: unpack(_lying_directory(65535, 60 << 20)), "declares 65535 entries")
    with pytest.raises(ValueError, match="declares 1000 entries"):
        unpack(many_entries_zip(1000))


def test_a_zip_bomb_is_refused_by_its_compression_ratio(unpack: Callable[[bytes], Path]) -> None:
    bomb = zip_bomb_bytes(64 << 20)
    assert len(bomb) < 200_000
    refused_cheaply(lambda: unpack(bomb), "more than 200× \\(a zip bomb\\)")


def test_a_zip_that_unpacks_to_more_than_a_chunk_can_be_is_refused(unpack: Callable[[bytes], Path]) -> None:
    limits = zip_limits(payload_of(small_render_spec()))
    # Stored members of 1 MiB each (ratio 1, each under the member cap), more of them than a chunk's bytes.
    members = {f"rgb/{n:08d}.png": bytes(1 << 20) for n in range(limits.unpacked_bytes // (1 << 20) + 1)}
    assert len(members) < limits.entries
    with pytest.raises(ValueError, match="more than a chunk"):
        unpack(zip_bytes_of({"chunk.json": b"{}", **members}, compression=zipfile.ZIP_STORED))
    with pytest.raises(ValueError, match="a chunk's files are at most"):
        unpack(zip_bytes_of({"chunk.json": b"{}", "annotations.json": bytes(limits.member_bytes + 1)}))


@pytest.mark.parametrize(
    ("name", "attr", "match"),
    [
        ("../../escape.json", 0, "outside the chunk"),
        ("/etc/escape.json", 0, "outside the chunk"),
        ("meta/" + "x" * 300 + ".json", 0, "too long"),
        ("meta/link.json", 0o120777 << 16, "symbolic link"),
    ],
)
def test_a_zip_member_that_would_leave_the_chunk_is_refused(
    unpack: Callable[[bytes], Path], tmp_path: Path, name: str, attr: int, match: str
) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = attr
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chunk.json", "{}")
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match=match):
        unpack(buffer.getvalue())
    assert not (tmp_path / "escape.json").exists()


def test_an_honest_chunk_still_unpacks(unpack: Callable[[bytes], Path], tmp_path: Path) -> None:
    honest = write_chunk(tmp_path / "honest", payload_of(small_render_spec()))
    root = unpack(zip_bytes(honest))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == sorted(
        p.relative_to(honest) for p in honest.rglob("*")
    )


# --- top-k update -----------------------------------------------------------------------------------------------

MODEL = {"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}


def _topk_layer(name: str, shape: tuple[int, ...]) -> bytes:
    """One top-k layer of k = 1 that declares `shape`: 16 bytes of body for any number of elements."""
    encoded = name.encode()
    head = struct.pack("<H", len(encoded)) + encoded + struct.pack("<BB", 0, len(shape))
    return head + struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<BIIf", 3, 1, 0, 1.0)


def _topk_payload(layers: list[bytes]) -> bytes:
    return MAGIC + struct.pack("<BBI", VERSION, 3, len(layers)) + b"".join(layers)


@pytest.fixture
def no_big_tensors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.zeros refuses more than a million elements (torch's memory is not traced); returns what was asked."""
    asked: list[int] = []
    zeros = torch.zeros

    def guarded(*size: Any, **kwargs: Any) -> torch.Tensor:
        numel = int(np.prod(size[0] if len(size) == 1 and isinstance(size[0], tuple) else size))
        asked.append(numel)
        assert numel <= 1 << 20, f"a decoder asked for {numel} elements"
        return zeros(*size, **kwargs)

    monkeypatch.setattr(torch, "zeros", guarded)
    return asked


def test_a_top_k_layer_of_one_value_declaring_256_m_elements_is_refused_before_allocation(
    no_big_tensors: list[int],
) -> None:
    bomb = _topk_payload([_topk_layer("fc.weight", (16384, 16383)), _topk_layer("fc.bias", (10,))])
    assert len(bomb) < 100
    shapes = update_shapes(MODEL)
    refused_cheaply(
        lambda: decompress(bomb, shapes=shapes), r"fc.weight: shape \(16384, 16383\), the model has \(10, 64\)"
    )
    assert no_big_tensors == []
    # Without the model's shapes the same payload passes the generic bound (256 M) and would be allocated.
    with pytest.raises(AssertionError, match="asked for 268419072 elements"):
        decompress(bomb)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([_topk_layer("fc.weight", (10, 64)), _topk_layer("evil", (10,))], "'evil' is not a layer of the model"),
        ([_topk_layer("fc.weight", (10, 64))], r"missing \['fc.bias'\]"),
        ([_topk_layer("fc.bias", (10, 1))], r"fc.bias: shape \(10, 1\), the model has \(10,\)"),
    ],
)
def test_an_update_whose_layers_are_not_the_models_is_refused_from_its_headers(
    no_big_tensors: list[int], layers: list[bytes], match: str
) -> None:
    refused_cheaply(lambda: decompress(_topk_payload(layers), shapes=update_shapes(MODEL)), match)


@pytest.mark.parametrize("name", ["none", "fp16", "int8", "topk", "powersgd"])
def test_an_honest_update_decodes_the_same_with_the_models_shapes(name: str) -> None:
    delta = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in MODEL.items()}
    spec = CompressionSpec(name, topk_fraction=0.1, rank=2)
    payload, _ = compress(
        delta, spec, {k: torch.zeros_like(v) for k, v in delta.items()} if spec.keeps_residual else None
    )
    plain, bounded = decompress(payload), decompress(payload, shapes=update_shapes(MODEL))
    assert plain.keys() == bounded.keys() == MODEL.keys()
    assert all(torch.equal(plain[k], bounded[k]) for k in MODEL)


@pytest.mark.django_db
def test_a_top_k_bomb_sent_to_a_training_round_is_rejected_as_malformed_without_allocating_it(
    poster: Any, operator: Any, tmp_path: Path, no_big_tensors: list[int]
) -> None:
    from marketplace.jobs import dispatch
    from marketplace.jobs.models import Assignment, AssignmentState
    from tests.marketplace.federated.helpers import coco_zip
    from tests.marketplace.federated.test_train_rounds import _by_node, _nodes, _run_node, _started, _verify
    from training.compress import payload_info

    dataset = coco_zip(tmp_path / "products.zip", images=30).read_bytes()
    _started(poster, dataset, rounds=1, compression={"name": "topk", "topk_fraction": 0.05})
    nodes = _nodes(operator, 2)
    leased = dispatch.schedule()
    owners = _by_node(leased, nodes)
    bad = leased[0]

    def bomb(update: bytes) -> bytes:
        # The node's own layers, each sent as one top-k value; the first declares 16384 × 16383 elements.
        layers = [layer["name"] for layer in payload_info(update)["layers"]]
        shapes = [(16384, 16383)] + [tuple(layer["shape"]) or (1,) for layer in payload_info(update)["layers"][1:]]
        return _topk_payload([_topk_layer(name, shape) for name, shape in zip(layers, shapes, strict=True)])

    assert _run_node(owners[bad], bad, tmp_path, bomb).status_code == 201
    _verify(bad)
    rejected = Assignment.objects.get(id=bad)
    assert rejected.state == AssignmentState.REJECTED
    assert "shape (16384, 16383), the model has" in rejected.state_reason, rejected.state_reason
    assert max(no_big_tensors, default=0) <= 1 << 20
