"""Crop-classification sets from COCO datasets: crop by box, resize, label by category; splits, shards, files."""

from __future__ import annotations

import io
import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

CROPS_FORMAT = "hashwork-training-crops/1"
ANNOTATIONS = "annotations.json"
# Pixel normalisation of every network here: uint8 → roughly zero-mean, unit-range floats.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


@dataclass
class CropSet:
    """Square crops as uint8 [N, 3, S, S], their labels int64 [N] (indices into `classes`), and the class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, S, S], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"crops must be square, got {tuple(self.images.shape[2:])}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            shape = tuple(self.labels.shape)
            raise ValueError(f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} {shape}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        """Side of the square crops in pixels."""
        return int(self.images.shape[2])

    def subset(self, indices: Tensor | list[int]) -> CropSet:
        """The crops at `indices`, in that order."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return CropSet(self.images[idx].clone(), self.labels[idx].clone(), list(self.classes))

    def counts(self) -> list[int]:
        """Crops per class."""
        return [int(c) for c in torch.bincount(self.labels, minlength=len(self.classes))]


def normalize(images: Tensor) -> Tensor:
    """uint8 crops [N, 3, S, S] → the float input of the networks."""
    return (images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


class _Source:
    """Files of a dataset: a zip (as `synthetic.merge` writes it) or a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            return
        if not path.is_file():
            raise ValueError(f"{path}: no such dataset (expected a COCO .zip or a directory with {ANNOTATIONS})")
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise ValueError(f"{path}: not a zip file (expected a COCO dataset .zip or directory)") from None

    def _safe(self, name: str) -> PurePosixPath:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name:
            raise ValueError(f"{self.path}: refusing file name {name!r} outside the dataset")
        return pure

    def read(self, name: str) -> bytes:
        pure = self._safe(name)
        try:
            if self.zip is not None:
                return self.zip.read(str(pure))
            return (self.path / pure).read_bytes()
        except (KeyError, OSError):
            raise ValueError(f"{self.path}: {name} is missing") from None

    def exists(self, name: str) -> bool:
        pure = self._safe(name)
        if self.zip is not None:
            try:
                self.zip.getinfo(str(pure))
            except KeyError:
                return False
            return True
        return (self.path / pure).is_file()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _coco(source: _Source) -> dict[str, Any]:
    if not source.exists(ANNOTATIONS):
        raise ValueError(f"{source.path}: not a COCO dataset (no {ANNOTATIONS})")
    try:
        coco = json.loads(source.read(ANNOTATIONS))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source.path}: {ANNOTATIONS} is not JSON ({exc})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{source.path}: {ANNOTATIONS} is not COCO (needs 'images' and 'categories' lists)")
    if not isinstance(coco.get("annotations"), list) or not coco["annotations"]:
        raise ValueError(f"{source.path}: {ANNOTATIONS} has no annotations")
    return coco


def _image_file(source: _Source, file_name: str) -> str:
    # COCO puts images in an `images/` folder beside the annotations by convention; synthetic uses `rgb/…`.
    for candidate in (file_name, f"images/{file_name}"):
        if source.exists(candidate):
            return candidate
    raise ValueError(f"{source.path}: image {file_name} is missing")


def square_box(bbox: list[float], margin: float) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1) around a COCO [x, y, w, h] box, widened by `margin` × its longer side per edge."""
    x, y, w, h = (float(v) for v in bbox)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(np.floor(cx - side / 2.0))
    y0 = int(np.floor(cy - side / 2.0))
    s = max(1, int(np.ceil(side)))
    return x0, y0, x0 + s, y0 + s


def crops_from_coco(
    path: str | Path, *, image_size: int = 32, margin: float = 0.1, min_visible: float = 0.0
) -> CropSet:
    """Crop every annotated object of a COCO dataset (a merged `.zip` or a directory) into a labelled set.

    Each crop is the square around the box widened by `margin` (parts outside the image are black), resized to
    `image_size`² (bilinear). Classes are the dataset's categories in id order; crowd annotations, empty boxes and
    objects whose `visible_fraction` is below `min_visible` are left out.
    """
    if not 4 <= image_size <= 1024:
        raise ValueError(f"image_size must be within 4..1024, got {image_size}")
    if not 0.0 <= margin <= 2.0:
        raise ValueError(f"margin must be within 0..2, got {margin}")
    source = _Source(Path(path))
    try:
        coco = _coco(source)
        try:
            categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
            label_of = {int(c["id"]): k for k, c in enumerate(categories)}
            classes = [str(c["name"]) for c in categories]
            images = {int(img["id"]): str(img["file_name"]) for img in coco["images"]}
            by_image: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
            for ann in coco["annotations"]:
                bbox = [float(v) for v in ann["bbox"]]
                if ann.get("iscrowd", 0) or len(bbox) != 4 or bbox[2] < 1 or bbox[3] < 1:
                    continue
                if float(ann.get("visible_fraction", 1.0)) < min_visible:
                    continue
                category = int(ann["category_id"])
                if category not in label_of:
                    raise ValueError(f"annotation {ann.get('id')} has unknown category_id {category}")
                image_id = int(ann["image_id"])
                if image_id not in images:
                    raise ValueError(f"annotation {ann.get('id')} refers to unknown image_id {image_id}")
                by_image[image_id].append((bbox, label_of[category]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source.path}: {ANNOTATIONS} is not valid COCO ({type(exc).__name__}: {exc})") from None
        if len(classes) < 2:
            raise ValueError(f"{source.path}: a classifier needs at least 2 categories, found {len(classes)}")
        crops: list[np.ndarray[Any, Any]] = []
        labels: list[int] = []
        for image_id in sorted(by_image):
            name = _image_file(source, images[image_id])
            try:
                with Image.open(io.BytesIO(source.read(name))) as img:
                    rgb = img.convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"{source.path}: {name} is not a readable image ({exc})") from None
            for bbox, label in by_image[image_id]:
                crop = rgb.crop(square_box(bbox, margin)).resize((image_size, image_size), Image.Resampling.BILINEAR)
                crops.append(np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1))
                labels.append(label)
    finally:
        source.close()
    if not crops:
        raise ValueError(f"{source.path}: no usable annotations (after min_visible={min_visible})")
    return CropSet(torch.from_numpy(np.stack(crops)), torch.tensor(labels, dtype=torch.int64), classes)


def _class_order(crops: CropSet, seed: int) -> list[Tensor]:
    """Per class, that class's crop indices in a seeded random order."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for label in range(len(crops.classes)):
        members = torch.nonzero(crops.labels == label).flatten()
        out.append(members[torch.randperm(len(members), generator=gen)])
    return out


def split(crops: CropSet, val_fraction: float, seed: int) -> tuple[CropSet, CropSet]:
    """(train, validation): stratified, `round(n_c × val_fraction)` crops of each class to validation; deterministic.

    The validation set is what the marketplace holds back for its loss check and evaluation; nodes never get it.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be within [0, 1), got {val_fraction}")
    train_idx: list[Tensor] = []
    val_idx: list[Tensor] = []
    for members in _class_order(crops, seed):
        n_val = round(len(members) * val_fraction)
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return crops.subset(torch.cat(train_idx).sort().values), crops.subset(torch.cat(val_idx).sort().values)


def shard(crops: CropSet, index: int, count: int, seed: int) -> CropSet:
    """Participant `index`'s share of `count`: classes dealt round-robin, so shards are disjoint, cover the set,
    differ in size by at most one crop and hold every class in (nearly) equal proportion; deterministic."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index must be within 0..{count - 1}, got {index}")
    dealt = torch.cat(_class_order(crops, seed))
    return crops.subset(dealt[index::count].sort().values)


def save_set(path: str | Path, crops: CropSet) -> None:
    """Write a crop set as safetensors (images, labels; class names in the metadata)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tensors = {"images": crops.images.contiguous(), "labels": crops.labels.contiguous()}
    save_file(tensors, str(tmp), metadata={"format": CROPS_FORMAT, "classes": json.dumps(crops.classes)})
    tmp.replace(out)


def load_set(path: str | Path) -> CropSet:
    """Read a crop set written by `save_set` (ValueError when the file is something else)."""
    where = str(path)
    try:
        with safe_open(where, framework="pt") as st:
            metadata = st.metadata() or {}
            names = set(st.keys())
            if metadata.get("format") != CROPS_FORMAT or names != {"images", "labels"}:
                raise ValueError(f"{where}: not a {CROPS_FORMAT} file")
            images, labels = st.get_tensor("images"), st.get_tensor("labels")
        classes = json.loads(metadata["classes"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: cannot read a crop set ({exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{where}: metadata 'classes' is not a list of names")
    try:
        return CropSet(images, labels, classes)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
