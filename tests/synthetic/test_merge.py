"""Streaming merge of chunks (built without Blender): ids renumbered, annotations intact, bad sets refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from synthetic import chunk
from synthetic.labels import annotations_for_image, decode_rle
from synthetic.merge import MergeError, merge


def _fake_chunk(root: Path, start: int, count: int, digest: str = "d" * 64) -> list[np.ndarray]:
    rng = np.random.default_rng(start)
    images, anns, masks = [], [], []
    for index in range(start, start + count):
        ids = np.zeros((16, 16), dtype=np.uint16)
        for instance in range(1, 4):
            y, x = rng.integers(0, 12, size=2)
            ids[y : y + 4, x : x + 4] = instance
        chunk.write_png(chunk.pass_path(root, "instance", index), ids)
        chunk.write_png(chunk.pass_path(root, "rgb", index), np.zeros((16, 16, 3), dtype=np.uint8))
        chunk.write_json(chunk.meta_path(root, index), {"index": index})
        images.append(
            {"id": index + 1, "index": index, "file_name": f"rgb/{chunk.stem(index)}.png", "width": 16, "height": 16}
        )
        present = {int(v) for v in np.unique(ids) if v}
        anns += annotations_for_image(ids, index + 1, {i: i for i in present}, {}, len(anns) + 1)
        masks.append(ids)
    categories = chunk.coco_categories(["a", "b", "c"])
    chunk.write_json(root / chunk.ANNOTATIONS, {"images": images, "annotations": anns, "categories": categories})
    manifest = {
        "format": chunk.CHUNK_FORMAT,
        "spec_digest": digest,
        "start": start,
        "count": count,
        "resolution": [16, 16],
    }
    chunk.write_json(root / chunk.MANIFEST, manifest)
    return masks


def test_merge_renumbers_ids_and_keeps_every_annotation(tmp_path: Path) -> None:
    masks = []
    # Given out of order: the merge sorts chunks by their first image.
    for start, count in ((5, 2), (0, 3), (3, 2)):
        masks_of = _fake_chunk(tmp_path / f"c{start}", start, count)
        masks.append((start, masks_of))
    out = tmp_path / "ds.zip"
    totals = merge([tmp_path / "c5", tmp_path / "c0", tmp_path / "c3"], out)
    by_index = {start + k: m for start, ms in masks for k, m in enumerate(ms)}
    with zipfile.ZipFile(out) as zf:
        coco = json.loads(zf.read("annotations.json"))
        names = set(zf.namelist())
    assert totals == {"images": 7, "annotations": len(coco["annotations"])}
    assert [img["id"] for img in coco["images"]] == list(range(1, 8))
    assert [img["index"] for img in coco["images"]] == list(range(7))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    index_of = {img["id"]: img["index"] for img in coco["images"]}
    for ann in coco["annotations"]:
        ids = by_index[index_of[ann["image_id"]]]
        assert np.array_equal(decode_rle(ann["segmentation"]), ids == ann["instance_id"])
    assert {"rgb/00000006.png", "instance/00000000.png", "meta/00000004.json"} <= names


def test_overlapping_or_foreign_chunks_are_refused(tmp_path: Path) -> None:
    _fake_chunk(tmp_path / "a", 0, 3)
    _fake_chunk(tmp_path / "b", 2, 2)
    _fake_chunk(tmp_path / "c", 3, 2, digest="e" * 64)
    with pytest.raises(MergeError, match="overlap"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "x.zip")
    with pytest.raises(MergeError, match="spec_digest"):
        merge([tmp_path / "a", tmp_path / "c"], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
