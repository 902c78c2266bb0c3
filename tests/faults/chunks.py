"""Honest render chunks without Blender (labels made with synthetic.labels, PNGs with synthetic.chunk), zips of
them, and the bombs the verifier must refuse."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from synthetic import chunk, validate_spec
from synthetic.labels import annotations_for_image, category_mask, encode_rle
from synthetic.normals import encode_normals
from tests.marketplace.jobs.test_render_kind import render_spec

PASSES = ["rgb", "instance", "category", "depth", "normals"]


def small_render_spec(**overrides: Any) -> dict[str, Any]:
    """A render job spec of 2-image chunks at 32×32 with every pass (normals too)."""
    output = {"resolution": [32, 32], "samples": 2, "passes": PASSES}
    return render_spec(**{"images": 4, "chunk_size": 2, "output": output, **overrides})


def payload_of(spec: dict[str, Any], start: int = 0, count: int = 2) -> dict[str, Any]:
    """A task payload as the render kind's split writes it (the normalised spec)."""
    normalised = validate_spec({k: v for k, v in spec.items() if k != "chunk_size"}).model_dump(mode="json")
    return {"spec": normalised, "start": start, "count": count}


def write_chunk(root: Path, payload: dict[str, Any]) -> Path:
    """The chunk an honest node renders for `payload`, made up but self-consistent and the same on every call:
    three boxes of instances per image, every pass the spec asks for, COCO annotations from the instance mask."""
    spec = validate_spec(payload["spec"])
    width, height = spec.output.resolution
    passes = list(spec.output.passes)
    start, count = payload["start"], payload["count"]
    names = spec.categories()
    images, annotations = [], []
    for index in range(start, start + count):
        rng = np.random.default_rng(index)
        ids = np.zeros((height, width), dtype=np.uint16)
        for instance in range(1, 4):
            y, x = rng.integers(0, min(width, height) - 8, size=2)
            ids[y : y + 8, x : x + 8] = instance
        category_of = {instance: (instance - 1) % len(names) + 1 for instance in range(1, 4)}
        chunk.write_png(chunk.pass_path(root, "instance", index), ids)
        if "category" in passes:
            chunk.write_png(chunk.pass_path(root, "category", index), category_mask(ids, category_of))
        if "depth" in passes:
            chunk.write_png(chunk.pass_path(root, "depth", index), (ids.astype(np.uint16) * 1000 + 500) * (ids > 0))
        if "rgb" in passes:
            rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            chunk.write_png(chunk.pass_path(root, "rgb", index), rgb)
        if "normals" in passes:
            normals = np.zeros((height, width, 3))
            normals[..., 2] = -1.0
            chunk.write_png(chunk.pass_path(root, "normals", index), encode_normals(normals, ids == 0))
        chunk.write_json(chunk.meta_path(root, index), {"index": index, "seed": int(rng.integers(0, 2**31))})
        images.append(
            {
                "id": index + 1,
                "index": index,
                "file_name": f"rgb/{chunk.stem(index)}.png",
                "width": width,
                "height": height,
            }
        )
        annotations += annotations_for_image(ids, index + 1, category_of, {}, len(annotations) + 1)
    coco = {"images": images, "annotations": annotations, "categories": chunk.coco_categories(names)}
    chunk.write_json(root / chunk.ANNOTATIONS, coco)
    manifest = {
        "format": chunk.CHUNK_FORMAT,
        "spec_digest": spec.digest(),
        "start": start,
        "count": count,
        "resolution": [width, height],
        "passes": passes,
        "device": "CPU",
        "seconds": 0.1,
    }
    chunk.write_json(root / chunk.MANIFEST, manifest)
    return root


def zip_bytes(root: Path) -> bytes:
    """The chunk zipped as the node agent zips it (deflated, paths relative to the chunk)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def rle_bomb(height: int = 4000, width: int = 4000) -> dict[str, Any]:
    """A few bytes of RLE that declare (and, decoded, fill) a height × width mask."""
    return encode_rle(np.zeros((height, width), dtype=bool))


def png_header_bomb(width: int = 4000, height: int = 4000, *, rgb16: bool = True, fill: bool = True) -> bytes:
    """A valid little PNG whose header claims width × height and whose data inflates to all of it: zeros,
    so ~100 KB of deflate for a 4000² 16-bit RGB image (96 MB raw); without `fill`, no image data at all."""
    depth, colour, channels = (16, 2, 6) if rgb16 else (8, 0, 1)
    raw = zlib.compress(bytes((width * channels + 1) * height) if fill else b"", 9)

    def part(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", raw) + part(b"IEND", b"")


def zip_bomb_bytes(member_bytes: int = 1 << 30) -> bytes:
    """A chunk.json plus one member of `member_bytes` zeros: about 1 MB of zip for 1 GiB (a ratio of ~1000)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("chunk.json", "{}")
        with archive.open("rgb/00000000.png", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(member_bytes >> 20):
                member.write(block)
    return buffer.getvalue()


def many_entries_zip(entries: int) -> bytes:
    """A zip of `entries` empty members: its central directory alone is ~60 bytes an entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for n in range(entries):
            archive.writestr(f"meta/{n:08d}.json", b"")
    return buffer.getvalue()
