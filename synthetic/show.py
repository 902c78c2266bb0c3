"""Preview one image of a chunk dir or dataset zip with mask, box and category overlays."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from synthetic import chunk
from synthetic.labels import decode_rle


def _source(path: Path) -> tuple[dict[str, Any], Any]:
    if path.is_dir():
        return chunk.read_json(path / chunk.ANNOTATIONS), lambda name: (path / name).read_bytes()
    zf = zipfile.ZipFile(path)
    return json.loads(zf.read(chunk.ANNOTATIONS)), zf.read


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k)
    c = rng.integers(60, 256, size=3)
    return (int(c[0]), int(c[1]), int(c[2]))


def show(dataset: str | Path, position: int, out_png: str | Path, *, scale: int = 0) -> dict[str, Any]:
    """Draw image number `position` (0-based, in the dataset's image order) with overlays into `out_png`.

    `scale` enlarges small renders (0 picks so the long side is at least 512 px). Returns the COCO image entry.
    """
    coco, read = _source(Path(dataset))
    images = coco["images"]
    if not 0 <= position < len(images):
        raise IndexError(f"image {position} outside 0..{len(images) - 1}")
    image = images[position]
    base = Image.open(io.BytesIO(read(image["file_name"]))).convert("RGB")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
    pixels = np.asarray(base, dtype=np.float32)
    for ann in anns:
        mask = decode_rle(ann["segmentation"])
        pixels[mask] = pixels[mask] * 0.5 + np.array(_colour(int(ann["instance_id"])), dtype=np.float32) * 0.5
    factor = scale or max(1, -(-512 // max(base.size)))
    view = Image.fromarray(pixels.astype(np.uint8)).resize(
        (base.width * factor, base.height * factor), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(view)
    for ann in anns:
        x, y, w, h = (v * factor for v in ann["bbox"])
        colour = _colour(int(ann["instance_id"]))
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=2)
        draw.text((x + 2, y + 1), names[ann["category_id"]], fill=colour)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    view.save(out)
    return dict(image)
