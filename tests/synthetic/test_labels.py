"""Label math without Blender: ID colours, boxes from masks, RLE, visibility, depth, screen-disjoint groups."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from synthetic.labels import (
    annotations_for_image,
    bbox_from_mask,
    category_mask,
    decode_ids,
    decode_rle,
    depth_mm,
    disjoint_groups,
    encode_rle,
    id_colour,
    visible_fraction,
)


def test_a_box_spans_the_inclusive_pixel_extents_of_the_mask() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    mask[7, 10] = True
    assert bbox_from_mask(mask) == [3, 2, 8, 6]
    assert bbox_from_mask(np.zeros((4, 4), dtype=bool)) is None


def test_rle_round_trips_through_pycocotools() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle), mask)
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode()}
    assert int(mask_utils.area(coco_rle)) == int(mask.sum())
    assert mask_utils.toBbox(coco_rle).tolist() == bbox_from_mask(mask)


def test_instance_ids_survive_the_half_float_id_colour_round_trip() -> None:
    ids = np.array([[0, 1, 255], [256, 4097, 65535]])
    r, g, b = np.zeros(ids.shape), np.zeros(ids.shape), np.zeros(ids.shape)
    for k, v in np.ndenumerate(ids):
        if v:
            r[k], g[k], b[k] = id_colour(int(v))
    alpha = (ids > 0).astype(float)
    half = [c.astype(np.float16).astype(np.float32) for c in (r, g, b, alpha)]
    assert np.array_equal(decode_ids(*half), ids)
    with pytest.raises(ValueError, match="outside"):
        id_colour(0)


def test_visibility_is_visible_over_alone_pixels_capped_at_one() -> None:
    assert visible_fraction(30, 120) == 0.25
    assert visible_fraction(5, 0) == 0.0
    assert visible_fraction(10, 9) == 1.0


def test_annotations_follow_the_mask_and_carry_visibility() -> None:
    ids = np.zeros((8, 8), dtype=np.uint16)
    ids[1:3, 1:4] = 2
    ids[5:8, 6:8] = 7
    anns = annotations_for_image(
        ids, image_id=9, category_of={2: 1, 7: 3}, alone_pixels={2: 12, 7: 6}, first_annotation_id=5
    )
    assert [(a["id"], a["instance_id"], a["category_id"], a["bbox"], a["area"]) for a in anns] == [
        (5, 2, 1, [1, 1, 3, 2], 6),
        (6, 7, 3, [6, 5, 2, 3], 6),
    ]
    assert [a["visible_fraction"] for a in anns] == [0.5, 1.0]
    assert all(a["iscrowd"] == 0 and a["image_id"] == 9 for a in anns)
    assert np.array_equal(decode_rle(anns[1]["segmentation"]), ids == 7)


def test_category_mask_maps_instances_and_keeps_background_zero() -> None:
    ids = np.array([[0, 1], [2, 2]], dtype=np.uint16)
    assert category_mask(ids, {1: 4, 2: 1}).tolist() == [[0, 4], [1, 1]]


def test_depth_is_millimetres_with_zero_for_background_and_out_of_range() -> None:
    z = np.array([[1.2344, 70.0], [1e10, 0.5]], dtype=np.float32)
    background = np.array([[False, False], [True, False]])
    assert depth_mm(z, background).tolist() == [[1234, 0], [0, 500]]


def test_groups_never_hold_overlapping_screen_boxes() -> None:
    boxes = {1: (0.0, 0.0, 10.0, 10.0), 2: (5.0, 5.0, 15.0, 15.0), 3: (20.0, 0.0, 30.0, 10.0), 4: None}
    groups = disjoint_groups(boxes)
    assert sorted(i for g in groups for i in g) == [1, 2, 3, 4]
    assert [1, 3] in groups
    assert [4] in groups
    assert not any({1, 2} <= set(g) for g in groups)
