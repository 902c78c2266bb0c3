"""Merge rendered chunks into one COCO dataset zip, streamed: memory stays at one chunk's annotations."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthetic import chunk
from synthetic.zipchunk import ZipRoot


class MergeError(ValueError):
    """Chunks that cannot form one dataset (different specs/categories, overlapping images, broken layout)."""


def _manifest(root: chunk.ChunkRoot) -> dict[str, Any]:
    try:
        manifest = chunk.read_json(root / chunk.MANIFEST)
    except (OSError, ValueError) as exc:
        raise MergeError(f"{root}: not a rendered chunk ({exc})") from None
    if manifest.get("format") != chunk.CHUNK_FORMAT:
        raise MergeError(f"{root}: {chunk.MANIFEST} is not a {chunk.CHUNK_FORMAT} manifest")
    return dict(manifest)


def merge(
    chunk_dirs: Sequence[str | chunk.ChunkRoot], out_zip: str | Path, *, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Write one COCO dataset zip from chunk dirs or chunk zips read in place (in image order); renumber image ids
    1..N and annotation ids 1..M.

    Layout: `annotations.json` (COCO) plus each chunk's pass folders (`rgb/`, `instance/`, …, `meta/`), file
    names keeping the global image index. Returns {"images": N, "annotations": M}.
    """
    roots = [d if isinstance(d, ZipRoot) else Path(d) for d in chunk_dirs]
    if not roots:
        raise MergeError("no chunks to merge")
    manifests = [(root, _manifest(root)) for root in roots]
    manifests.sort(key=lambda rm: int(rm[1]["start"]))
    first = manifests[0][1]
    for root, manifest in manifests:
        for key in ("spec_digest", "resolution"):
            if manifest.get(key) != first.get(key):
                raise MergeError(f"{root}: {key} differs from the other chunks")
    for (root_a, a), (root_b, b) in itertools.pairwise(manifests):
        if int(a["start"]) + int(a["count"]) > int(b["start"]):
            raise MergeError(f"{root_a} and {root_b} overlap (images {b['start']}…)")
    roots = [root for root, _ in manifests]
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    categories: list[dict[str, Any]] | None = None
    n_images = n_annotations = 0
    coco_tmp = out.with_name(f".{out.name}.coco.tmp")
    # The COCO file is streamed to disk beside the zip (a zip cannot take other members while one is open).
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with coco_tmp.open("wb") as raw:

                def put(text: str) -> None:
                    raw.write(text.encode())

                put('{"info":{"description":"Hashwork synthetic dataset","version":"1"},"images":[')
                # Pass 1: images (and the files), one chunk in memory at a time.
                for root in roots:
                    coco = chunk.read_json(root / chunk.ANNOTATIONS)
                    if categories is None:
                        categories = coco["categories"]
                    elif coco["categories"] != categories:
                        raise MergeError(f"{root}: categories differ from the other chunks")
                    for image in coco["images"]:
                        n_images += 1
                        put(("," if n_images > 1 else "") + json.dumps({**image, "id": n_images}, sort_keys=True))
                        index = int(image["index"])
                        for folder in (*chunk.PASS_DIRS.values(), chunk.META_DIR):
                            ext = "json" if folder == chunk.META_DIR else "png"
                            src = root / folder / f"{chunk.stem(index)}.{ext}"
                            if isinstance(src, ZipRoot):
                                if src.is_file():
                                    zf.writestr(f"{folder}/{src.name}", src.read_bytes())
                            elif src.is_file():
                                zf.write(src, f"{folder}/{src.name}")
                        if progress is not None:
                            progress(n_images)
                put('],"annotations":[')
                # Pass 2: annotations, re-read chunk by chunk so memory does not grow with the dataset.
                next_image = 0
                for root in roots:
                    coco = chunk.read_json(root / chunk.ANNOTATIONS)
                    # Same order as pass 1, so the new ids are recomputed rather than kept for every image.
                    mapping = {int(image["id"]): next_image + k + 1 for k, image in enumerate(coco["images"])}
                    next_image += len(coco["images"])
                    for ann in coco["annotations"]:
                        n_annotations += 1
                        renumbered = {**ann, "id": n_annotations, "image_id": mapping[int(ann["image_id"])]}
                        put(("," if n_annotations > 1 else "") + json.dumps(renumbered, sort_keys=True))
                put('],"categories":' + json.dumps(categories) + "}")
            zf.write(coco_tmp, chunk.ANNOTATIONS, compress_type=zipfile.ZIP_DEFLATED)
        tmp.replace(out)
    finally:
        coco_tmp.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return {"images": n_images, "annotations": n_annotations}
