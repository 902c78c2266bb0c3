"""Shared material for train-job tests: a small, learnable COCO dataset (coloured shapes, one colour family per
category) written as a zip the way synthetic.merge lays one out."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red-carton": (200, 40, 40), "green-can": (40, 180, 60), "blue-bottle": (40, 70, 210)}


def coco_zip(path: Path, *, images: int = 24, size: int = 64, seed: int = 3) -> Path:
    """`images` pictures with three objects each (one per category, random place and size) on a grey noise
    background; annotations.json plus rgb/<n>.png."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(COLOURS)]
    coco: dict[str, list[dict[str, object]]] = {"images": [], "annotations": [], "categories": categories}  # type: ignore[dict-item]
    with zipfile.ZipFile(path, "w") as archive:
        for n in range(images):
            pixels = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
            picture = Image.fromarray(pixels)
            draw = ImageDraw.Draw(picture)
            for c, (name, colour) in enumerate(COLOURS.items()):
                side = int(rng.integers(12, 20))
                x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                jitter = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-25, 25, 3), 0, 255))
                if name == "green-can":
                    draw.ellipse([x, y, x + side, y + side], fill=jitter)
                else:
                    draw.rectangle([x, y, x + side, y + side], fill=jitter)
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": n + 1,
                        "category_id": c + 1,
                        "bbox": [x, y, side, side],
                        "area": side * side,
                        "iscrowd": 0,
                    }
                )
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            archive.writestr(f"rgb/{n:08d}.png", buffer.getvalue())
            coco["images"].append({"id": n + 1, "file_name": f"rgb/{n:08d}.png", "width": size, "height": size})
        archive.writestr("annotations.json", json.dumps(coco))
    return path
