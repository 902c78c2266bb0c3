"""What a chunk's manifest and COCO file must hold before the verifier reads anything by their numbers: types,
ranges and references, checked so that a node's malformed files become one reason, never an exception."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synthetic import chunk

# The spec's largest side (spec.OutputSpec.resolution).
MAX_SIDE = 8192
# Far above any chunk (the marketplace's are ≤ 256 images): only bounds the lists the checks build.
MAX_CHUNK_IMAGES = 65536
MAX_INDEX = 2**31 - 1
MAX_INSTANCE_ID = 65535


class SchemaError(ValueError):
    """A chunk's chunk.json or annotations.json does not hold what its format says; the message names the field."""


@dataclass(frozen=True)
class Coco:
    """The checked parts of a chunk's COCO file: images by index, annotations by image index, category ids."""

    by_index: dict[int, dict[str, Any]]
    anns: dict[int, list[dict[str, Any]]]
    categories: set[int]


def short(value: Any, limit: int = 60) -> str:
    """repr of a node-supplied value, cut to `limit` characters (a reason must stay readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def whole(value: Any, low: int, high: int) -> bool:
    """Whether `value` is an int (not a bool) within low..high."""
    return type(value) is int and low <= value <= high


def _int(item: dict[str, Any], key: str, where: str, low: int = 0, high: int = MAX_INDEX) -> int:
    if key not in item:
        raise SchemaError(f"{where} has no {key}")
    value = item[key]
    if not whole(value, low, high):
        raise SchemaError(f"{where} has {key} {short(value)}, not a whole number within {low}..{high}")
    return int(value)


def check_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest, once its format, start, count, resolution and passes are what the verifier reads
    (SchemaError naming the first field that is not)."""
    if not isinstance(manifest, dict) or manifest.get("format") != chunk.CHUNK_FORMAT:
        raise SchemaError(f"{chunk.MANIFEST} is not a {chunk.CHUNK_FORMAT} manifest")
    _int(manifest, "start", chunk.MANIFEST)
    _int(manifest, "count", chunk.MANIFEST, 1, MAX_CHUNK_IMAGES)
    resolution = manifest.get("resolution")
    if not (isinstance(resolution, list) and len(resolution) == 2 and all(whole(s, 1, MAX_SIDE) for s in resolution)):
        raise SchemaError(f"{chunk.MANIFEST} has resolution {short(resolution)}, not [width, height] ≤ {MAX_SIDE}")
    passes = manifest.get("passes")
    if (
        not isinstance(passes, list)
        or not all(isinstance(p, str) and p in chunk.PASS_DIRS for p in passes)
        or len(set(passes)) != len(passes)
        or "instance" not in passes
    ):
        raise SchemaError(
            f"{chunk.MANIFEST} has passes {short(passes)}, not distinct names of {sorted(chunk.PASS_DIRS)} "
            "including instance"
        )
    return manifest


def check_coco(coco: Any) -> Coco:
    """The COCO file's images (a whole-number id and index each, no index twice), categories (whole-number ids)
    and annotations (whole-number image_id of a listed image, category_id and instance_id), or SchemaError naming
    the first item that breaks the schema. Unknown category ids are for the caller to report."""
    if not isinstance(coco, dict):
        raise SchemaError(f"{chunk.ANNOTATIONS} is not a COCO object")
    lists: dict[str, list[dict[str, Any]]] = {}
    for key in ("images", "annotations", "categories"):
        value = coco.get(key)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise SchemaError(f"{chunk.ANNOTATIONS}: {key} is not a list of objects")
        lists[key] = value
    if len(lists["images"]) > MAX_CHUNK_IMAGES:
        raise SchemaError(f"{chunk.ANNOTATIONS} lists more than {MAX_CHUNK_IMAGES} images")
    by_index: dict[int, dict[str, Any]] = {}
    index_of: dict[int, int] = {}
    for n, image in enumerate(lists["images"]):
        index = _int(image, "index", f"image {n}")
        image_id = _int(image, "id", f"image {n}")
        if index in by_index or image_id in index_of:
            raise SchemaError(f"image {n}: index {index} or id {image_id} appears twice")
        by_index[index] = image
        index_of[image_id] = index
    categories = {_int(c, "id", f"category {n}") for n, c in enumerate(lists["categories"])}
    anns: dict[int, list[dict[str, Any]]] = {index: [] for index in by_index}
    for n, ann in enumerate(lists["annotations"]):
        where = f"annotation {n}"
        image_id = _int(ann, "image_id", where)
        if image_id not in index_of:
            raise SchemaError(f"{where} has image_id {image_id}, which no image has")
        _int(ann, "category_id", where)
        _int(ann, "instance_id", where, 1, MAX_INSTANCE_ID)
        anns[index_of[image_id]].append(ann)
    return Coco(by_index, anns, categories)
