"""The on-disk layout of a rendered chunk (and of a merged dataset), with bpy-free read/write helpers."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, overload

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from synthetic import png16
from synthetic.zipchunk import ZipRoot

CHUNK_FORMAT = "hashwork-synthetic-chunk/1"
MANIFEST = "chunk.json"
ANNOTATIONS = "annotations.json"
# pass name → folder; every per-image file is <folder>/<global index, 8 digits>.<ext>
PASS_DIRS = {"rgb": "rgb", "instance": "instance", "category": "category", "depth": "depth", "normals": "normals"}
META_DIR = "meta"
# Where a chunk's files are read from: a folder, or its zip read in place (the marketplace's verifier, its merge).
ChunkRoot = Path | ZipRoot
# Chunk files nest a few levels (a COCO annotation's RLE is at 4); deeper is not a chunk.
MAX_JSON_DEPTH = 32


def stem(index: int) -> str:
    """File stem of image `index` (global, 0-based)."""
    return f"{index:08d}"


@overload
def pass_path(root: Path, pass_name: str, index: int) -> Path: ...
@overload
def pass_path(root: ChunkRoot, pass_name: str, index: int) -> ChunkRoot: ...
def pass_path(root: ChunkRoot, pass_name: str, index: int) -> ChunkRoot:
    """Where pass `pass_name` of image `index` lives under `root`."""
    return root / PASS_DIRS[pass_name] / f"{stem(index)}.png"


@overload
def meta_path(root: Path, index: int) -> Path: ...
@overload
def meta_path(root: ChunkRoot, index: int) -> ChunkRoot: ...
def meta_path(root: ChunkRoot, index: int) -> ChunkRoot:
    """Where the metadata JSON of image `index` lives under `root`."""
    return root / META_DIR / f"{stem(index)}.json"


def write_png(path: Path, array: NDArray[Any]) -> None:
    """Write uint8 RGB, uint16 single-channel or uint16 RGB pixels as PNG (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if array.dtype == np.uint16 and array.ndim == 3:
        tmp.write_bytes(png16.encode(array))
    else:
        Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_png(path: ChunkRoot, *, shape: tuple[int, int] | None = None) -> NDArray[Any]:
    """Pixels of a PNG: uint8 H×W×3 for RGB, uint16 H×W for 16-bit single-channel, uint16 H×W×3 for 16-bit RGB.

    A PNG's header states its own size, so a small file can ask for gigabytes: with `shape` ((height, width)) a
    header of any other size is refused before the image data is inflated, and without, Pillow's decompression
    bomb limit is an error, not a warning. Anything that is not a readable PNG is a ValueError.
    """
    with path.open("rb") as handle:
        if png16.is_rgb16(handle.read(26)):
            handle.seek(0)
            return png16.decode(handle.read(), shape=shape)
        handle.seek(0)
        return _read_pillow(handle, shape)


def _read_pillow(handle: Any, shape: tuple[int, int] | None) -> NDArray[Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=["PNG"]) as img:
                if shape is not None and img.size != (shape[1], shape[0]):
                    width, height = img.size
                    raise ValueError(f"PNG is {width}×{height}, expected {shape[1]}×{shape[0]}")
                if img.mode in ("I;16", "I;16B", "I"):
                    return np.array(img, dtype=np.uint16)
                return np.array(img.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"PNG is a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError("not a PNG file") from None
    except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        # Pillow reports a broken or truncated PNG as any of these.
        raise ValueError(f"PNG is broken or truncated ({type(exc).__name__}: {exc})") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON deterministically (sorted keys), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, path)


def _depth(data: Any) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: ChunkRoot) -> Any:
    """Load a JSON file; ValueError for one that is not JSON or nests deeper than MAX_JSON_DEPTH (comparing such
    a file would exhaust the interpreter's recursion limit)."""
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ValueError(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def coco_categories(names: list[str]) -> list[dict[str, Any]]:
    """COCO categories: id = position + 1."""
    return [{"id": k + 1, "name": name, "supercategory": "product"} for k, name in enumerate(names)]
