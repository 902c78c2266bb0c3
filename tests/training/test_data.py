"""Crop sets from COCO datasets (directory and merged zip), splits, shards and crop set files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from tests.training.helpers import squares, write_coco
from training.data import CropSet, crops_from_coco, load_set, save_set, shard, split, square_box


def _zip(root: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return out


def test_crops_come_from_a_coco_directory_labelled_by_category_id_order(tmp_path: Path) -> None:
    write_coco(tmp_path / "ds")
    crops = crops_from_coco(tmp_path / "ds", image_size=8, margin=0.0)
    # Category ids 1 (red_box), 2 (blue_box): classes follow the ids, not the file's order; the crowd box is out.
    assert crops.classes == ["red_box", "blue_box"]
    assert crops.labels.tolist() == [0, 1, 0, 0, 1]
    assert crops.images.shape == (5, 3, 8, 8)
    assert crops.images.dtype == torch.uint8
    red, blue = crops.images[0, :, 4, 4].tolist(), crops.images[1, :, 4, 4].tolist()
    assert red == [255, 0, 0]
    assert blue == [0, 0, 255]
    # The box half outside its image: the part beyond the left edge is black, the inside is red.
    edge = crops.images[2]
    assert edge[:, 4, 0].tolist() == [0, 0, 0]
    assert edge[:, 4, 7].tolist() == [255, 0, 0]


def test_the_merged_zip_layout_gives_the_same_crops_and_min_visible_filters(tmp_path: Path) -> None:
    write_coco(tmp_path / "ds")
    from_dir = crops_from_coco(tmp_path / "ds", image_size=12)
    from_zip = crops_from_coco(_zip(tmp_path / "ds", tmp_path / "ds.zip"), image_size=12)
    assert torch.equal(from_dir.images, from_zip.images)
    assert torch.equal(from_dir.labels, from_zip.labels)
    visible = crops_from_coco(tmp_path / "ds.zip", image_size=12, min_visible=0.5)
    assert len(visible) == 4  # the 0.2-visible box is left out


def test_a_square_box_widens_the_longer_side_by_the_margin() -> None:
    assert square_box([10, 20, 10, 4], 0.1) == (9, 16, 21, 28)
    assert square_box([0, 0, 4, 4], 0.0) == (0, 0, 4, 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root.mkdir(), "no annotations.json"),
        (lambda root: write_coco(root, zero_annotations=True), "has no annotations"),
        (lambda root: (root.mkdir(), (root / "annotations.json").write_text("[1, 2]")), "is not COCO"),
        (lambda root: (root.mkdir(), (root / "annotations.json").write_text("{oops")), "is not JSON"),
    ],
)
def test_what_is_not_a_coco_dataset_is_a_clear_value_error(tmp_path: Path, make: object, message: str) -> None:
    root = tmp_path / "ds"
    make(root)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        crops_from_coco(root)


def test_a_missing_file_or_a_non_zip_or_a_missing_image_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such dataset"):
        crops_from_coco(tmp_path / "absent.zip")
    (tmp_path / "x.zip").write_bytes(b"PK but not really")
    with pytest.raises(ValueError, match="not a zip file"):
        crops_from_coco(tmp_path / "x.zip")
    coco = write_coco(tmp_path / "ds")
    (tmp_path / "ds" / coco["images"][1]["file_name"]).unlink()  # type: ignore[index]
    with pytest.raises(ValueError, match=r"00000001\.png is missing"):
        crops_from_coco(tmp_path / "ds")
    coco["images"][0]["file_name"] = "../../etc/passwd"  # type: ignore[index]
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="outside the dataset"):
        crops_from_coco(tmp_path / "ds")


def _ids(part: CropSet, whole: CropSet) -> list[int]:
    """Positions in `whole` of each crop of `part` (crops of `squares` are unique)."""
    flat = whole.images.reshape(len(whole), -1)
    return [int(torch.nonzero((flat == img.reshape(-1)).all(dim=1))[0]) for img in part.images]


def test_split_is_stratified_disjoint_covering_and_deterministic() -> None:
    crops = squares(203, image_size=8, seed=4)
    train, val = split(crops, 0.2, seed=7)
    again_train, _ = split(crops, 0.2, seed=7)
    other_train, _ = split(crops, 0.2, seed=8)
    assert torch.equal(train.images, again_train.images)
    assert not torch.equal(train.images, other_train.images)
    ids_train, ids_val = _ids(train, crops), _ids(val, crops)
    assert sorted(ids_train + ids_val) == list(range(203))
    for label, n in enumerate(crops.counts()):
        assert val.counts()[label] == round(n * 0.2)


def test_shards_are_disjoint_covering_balanced_and_deterministic() -> None:
    crops = squares(103, image_size=8, seed=5)
    shards = [shard(crops, k, 4, seed=1) for k in range(4)]
    ids = [_ids(s, crops) for s in shards]
    assert sorted(i for part in ids for i in part) == list(range(103))
    assert {len(s) for s in shards} <= {25, 26}
    for label in range(4):
        counts = [s.counts()[label] for s in shards]
        assert max(counts) - min(counts) <= 1
    assert torch.equal(shard(crops, 2, 4, seed=1).images, shards[2].images)
    assert not torch.equal(shard(crops, 2, 4, seed=2).images, shards[2].images)
    with pytest.raises(ValueError, match="shard index"):
        shard(crops, 4, 4, seed=1)


def test_a_crop_set_file_round_trips_and_other_files_are_refused(tmp_path: Path) -> None:
    crops = squares(10, image_size=8)
    save_set(tmp_path / "c.safetensors", crops)
    back = load_set(tmp_path / "c.safetensors")
    assert torch.equal(back.images, crops.images)
    assert torch.equal(back.labels, crops.labels)
    assert back.classes == crops.classes
    from training.weights import initial_state, save_model

    save_model(
        tmp_path / "m.safetensors",
        initial_state("smallcnn", 4, 8, 0),
        model="smallcnn",
        classes=crops.classes,
        image_size=8,
    )
    with pytest.raises(ValueError, match="not a hashwork-training-crops/1 file"):
        load_set(tmp_path / "m.safetensors")
