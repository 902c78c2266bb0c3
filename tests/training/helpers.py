"""Shared test material: an easy, numpy-made crop set (coloured squares on noisy grey) and a tiny COCO dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import CropSet

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def squares(n: int, *, image_size: int = 16, seed: int = 0) -> CropSet:
    """`n` crops of 4 classes: a square of the class colour (random size, place and shade) on noisy grey."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    labels = rng.integers(0, len(names), size=n)
    for i, label in enumerate(labels):
        grey = rng.integers(60, 190)
        img = rng.normal(grey, 30, size=(image_size, image_size, 3))
        side = int(rng.integers(image_size // 3, image_size - 2))
        y, x = rng.integers(0, image_size - side + 1, size=2)
        shade = rng.uniform(0.6, 1.1)
        img[y : y + side, x : x + side] = np.array(COLOURS[names[label]]) * shade + rng.normal(0, 25, (side, side, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return CropSet(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), names)


def write_coco(root: Path, *, zero_annotations: bool = False) -> dict[str, object]:
    """A 3-image COCO dataset in `root` (rgb/*.png + annotations.json): 5 boxes over 2 categories, one crowd box,
    one box half outside its image, one with low visibility. Returns the COCO dict."""
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    boxes = {
        1: [([4, 4, 10, 10], 1, 1.0, 0), ([30, 20, 8, 16], 2, 1.0, 0)],
        2: [([40, 40, 20, 12], 2, 1.0, 1), ([-6, 10, 14, 14], 1, 0.9, 0)],
        3: [([10, 30, 12, 12], 1, 0.2, 0), ([28, 8, 16, 16], 2, 1.0, 0)],
    }
    colour = {1: (255, 0, 0), 2: (0, 0, 255)}
    for image_id, anns in boxes.items():
        pixels = np.full((48, 64, 3), 128, dtype=np.uint8)
        for bbox, category, _, _ in anns:
            x, y, w, h = bbox
            pixels[max(0, y) : y + h, max(0, x) : x + w] = colour[category]
        name = f"rgb/{image_id - 1:08d}.png"
        Image.fromarray(pixels).save(root / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for bbox, category, visible, crowd in anns:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": crowd,
                    "visible_fraction": visible,
                }
            )
    coco: dict[str, object] = {
        "images": images,
        "annotations": [] if zero_annotations else annotations,
        "categories": [{"id": 2, "name": "blue_box"}, {"id": 1, "name": "red_box"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return coco
