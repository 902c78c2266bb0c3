"""Label math with no Blender: instance ids from ID colours, boxes from masks, RLE, visibility, depth."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from pycocotools import mask as mask_utils  # type: ignore[import-untyped]

DEPTH_MAX_MM = 65535
# The largest side an RLE may declare (the spec's resolution bound).
MAX_RLE_SIDE = 8192


def id_colour(instance_id: int) -> tuple[float, float, float]:
    """The flat colour the label render gives an instance: its id in the red/green bytes, blue = 1 as a marker."""
    if not 0 < instance_id < 65536:
        raise ValueError(f"instance id {instance_id} outside 1..65535")
    return ((instance_id >> 8) / 255.0, (instance_id & 0xFF) / 255.0, 1.0)


def decode_ids(r: NDArray[Any], g: NDArray[Any], b: NDArray[Any], a: NDArray[Any]) -> NDArray[Any]:
    """Instance ids (uint16, 0 = nothing labelled) from the label render's linear float channels."""
    hi = np.rint(r * 255.0).astype(np.int64)
    lo = np.rint(g * 255.0).astype(np.int64)
    labelled = (a > 0.5) & (b > 0.5)
    ids = np.where(labelled, hi * 256 + lo, 0)
    return ids.astype(np.uint16)


def depth_mm(z: NDArray[Any], background: NDArray[Any]) -> NDArray[Any]:
    """Planar depth in millimetres as uint16; 0 where nothing was hit or beyond 65.535 m."""
    mm = np.rint(np.where(background, 0.0, z.astype(np.float64) * 1000.0))
    mm[(mm > DEPTH_MAX_MM) | (mm < 0) | ~np.isfinite(mm)] = 0
    out: NDArray[Any] = mm.astype(np.uint16)
    return out


def bbox_from_mask(mask: NDArray[Any]) -> list[int] | None:
    """COCO [x, y, width, height] of the pixels set in `mask` (inclusive pixel extents), or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def encode_rle(mask: NDArray[Any]) -> dict[str, Any]:
    """COCO compressed RLE of a boolean mask, JSON-ready (`counts` as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _rle_runs(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString: 5-bit groups from '0', a
    continuation bit, sign extension, then deltas from the run two places back); ValueError where it is malformed."""
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64 or shift > 30:
            raise ValueError("segmentation counts are not a COCO compressed RLE string")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value = shift = 0
    if shift:
        raise ValueError("segmentation counts end in the middle of a run")
    return runs


def decode_rle(rle: Any, shape: tuple[int, int] | None = None) -> NDArray[Any]:
    """The boolean mask of a JSON RLE as written by `encode_rle`; ValueError for anything else.

    An RLE declares its own size, so a few bytes could ask for a mask of gigabytes: the size must be two ints up to
    MAX_RLE_SIDE (and equal `shape`, (height, width), when given) and the runs must be non-negative and cover
    exactly height × width pixels, all checked before anything of that size is allocated.
    """
    if not isinstance(rle, dict):
        raise ValueError(f"segmentation must be an RLE object, got {type(rle).__name__}")
    size, counts = rle.get("size"), rle.get("counts")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(type(side) is int and 0 <= side <= MAX_RLE_SIDE for side in size)
    ):
        raise ValueError(f"segmentation size {str(size)[:40]} is not [height, width] within 0..{MAX_RLE_SIDE}")
    if shape is not None and tuple(size) != tuple(shape):
        raise ValueError(f"segmentation size {size} is not the image's {list(shape)}")
    if not isinstance(counts, str) or not counts.isascii():
        raise ValueError("segmentation counts must be an ASCII string (COCO compressed RLE)")
    height, width = size
    if len(counts) > height * width + 1:
        raise ValueError("segmentation counts are longer than the mask has pixels")
    runs = _rle_runs(counts)
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"segmentation runs do not cover the {height}×{width} mask exactly")
    decoded = mask_utils.decode({"size": size, "counts": counts.encode("ascii")})
    return np.asarray(decoded, dtype=bool)


def pixel_counts(ids: NDArray[Any]) -> dict[int, int]:
    """Pixels per non-zero instance id."""
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def visible_fraction(visible_pixels: int, alone_pixels: int) -> float:
    """Visible pixels ÷ the pixels the object covers when rendered alone (in frame), rounded to 4 places."""
    if alone_pixels <= 0:
        return 0.0
    return round(min(1.0, visible_pixels / alone_pixels), 4)


def category_mask(ids: NDArray[Any], category_of: dict[int, int]) -> NDArray[Any]:
    """Category ids per pixel (uint16, 0 = background) from instance ids."""
    lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint16)
    for instance, category in category_of.items():
        if instance < lookup.size:
            lookup[instance] = category
    out: NDArray[Any] = lookup[ids]
    return out


def annotations_for_image(
    ids: NDArray[Any],
    image_id: int,
    category_of: dict[int, int],
    alone_pixels: dict[int, int],
    first_annotation_id: int,
) -> list[dict[str, Any]]:
    """COCO annotations of one image: one per visible instance, in instance-id order."""
    out: list[dict[str, Any]] = []
    for k, (instance, visible) in enumerate(sorted(pixel_counts(ids).items())):
        mask = ids == instance
        bbox = bbox_from_mask(mask)
        assert bbox is not None
        out.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": category_of[instance],
                "instance_id": instance,
                "bbox": bbox,
                "area": visible,
                "segmentation": encode_rle(mask),
                "iscrowd": 0,
                "visible_fraction": visible_fraction(visible, alone_pixels.get(instance, visible)),
            }
        )
    return out


def disjoint_groups(boxes: dict[int, tuple[float, float, float, float] | None]) -> list[list[int]]:
    """Greedy groups of instances whose screen boxes (x0, y0, x1, y1) do not overlap; None = alone in a group.

    Rendering one group at a time gives every member's alone-footprint, because members cannot cover one another.
    """
    groups: list[tuple[list[int], list[tuple[float, float, float, float]]]] = []
    for instance in sorted(boxes):
        box = boxes[instance]
        if box is None:
            groups.append(([instance], []))
            continue
        for members, taken in groups:
            if taken and all(box[2] < t[0] or t[2] < box[0] or box[3] < t[1] or t[3] < box[1] for t in taken):
                members.append(instance)
                taken.append(box)
                break
        else:
            groups.append(([instance], [box]))
    return [members for members, _ in groups]
