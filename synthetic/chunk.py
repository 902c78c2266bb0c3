"""The on-disk layout of a rendered chunk (and of a merged dataset), with bpy-free read/write helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from synthetic import png16

CHUNK_FORMAT = "hashwork-synthetic-chunk/1"
MANIFEST = "chunk.json"
ANNOTATIONS = "annotations.json"
# pass name → folder; every per-image file is <folder>/<global index, 8 digits>.<ext>
PASS_DIRS = {"rgb": "rgb", "instance": "instance", "category": "category", "depth": "depth", "normals": "normals"}
META_DIR = "meta"


def stem(index: int) -> str:
    """File stem of image `index` (global, 0-based)."""
    return f"{index:08d}"


def pass_path(root: Path, pass_name: str, index: int) -> Path:
    """Where pass `pass_name` of image `index` lives under `root`."""
    return root / PASS_DIRS[pass_name] / f"{stem(index)}.png"


def meta_path(root: Path, index: int) -> Path:
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


def read_png(path: Path) -> NDArray[Any]:
    """Pixels of a PNG: uint8 H×W×3 for RGB, uint16 H×W for 16-bit single-channel, uint16 H×W×3 for 16-bit RGB."""
    with path.open("rb") as handle:
        if png16.is_rgb16(handle.read(26)):
            handle.seek(0)
            return png16.decode(handle.read())
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I"):
            return np.array(img, dtype=np.uint16)
        return np.array(img.convert("RGB"), dtype=np.uint8)


def write_json(path: Path, data: Any) -> None:
    """Write JSON deterministically (sorted keys), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Load a JSON file."""
    return json.loads(path.read_text())


def coco_categories(names: list[str]) -> list[dict[str, Any]]:
    """COCO categories: id = position + 1."""
    return [{"id": k + 1, "name": name, "supercategory": "product"} for k, name in enumerate(names)]
