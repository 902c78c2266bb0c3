"""Verification of rendered chunks: format, label passes exactly, normals by angle, RGB by PSNR; the verdict names
what failed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synthetic import chunk, schema
from synthetic.labels import bbox_from_mask, decode_rle
from synthetic.normals import angle_deg, decode_normals
from synthetic.schema import clip, short
from synthetic.zipchunk import ZipRoot

# RGB rule, from measurements on this project's scenes (docs/synthetic.md, "Verification"; 128², 4 images each):
# honest CPU replicas in separate processes are pixel-identical (PSNR = inf); a render with ¼ of the samples
# scores 19–26 dB (16 vs 4 samples) and 27–34 dB (64 vs 16) against the honest one — a 30 dB rule, what other
# render farms use, would accept some of them. 50 dB rejects every lazy render measured with a ≥16 dB margin and
# leaves room for the small floating-point drift expected between GPU and CPU replicas sharing a seed.
RGB_MIN_PSNR_DB = 50.0
# Normals rule (docs/synthetic.md, "Verification"): normals come from the same pinned software rasteriser as the
# labels, so honest replicas are identical (measured: 0° between processes). Making llvmpipe generate code for
# other CPUs changed nothing (AVX only, SSE4.1, SSE2, 128-bit vectors) or, with scalar code, 15 pixels of one image
# by one 16-bit code (≤ 0.002°); the half-float framebuffer could at worst round one step differently
# (≈ 0.02–0.03°). The foreground must match exactly, like the masks; 0.05° per pixel allows that step, while 8-bit
# re-quantised normals are off by up to 0.30–0.34° in ≥ 98 % of the pixels, and Cycles' own normal pass (1 sample)
# by ~90° on a few edge pixels.
NORMALS_MAX_ANGLE_DEG = 0.05
LABEL_PASSES = ("instance", "category", "depth", "normals")
_SINGLE_CHANNEL = ("instance", "category", "depth")
_MAX_REASONS = 50


@dataclass
class Verdict:
    """Whether a result is accepted, and why not (each reason names the image, the pass and the metric)."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    psnr_db: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (inf PSNR as the string 'inf')."""
        return {
            "ok": self.ok,
            "reasons": self.reasons,
            "psnr_db": {str(k): ("inf" if math.isinf(v) else round(v, 3)) for k, v in self.psnr_db.items()},
        }


def _cap(reasons: list[str]) -> list[str]:
    if len(reasons) <= _MAX_REASONS:
        return reasons
    return [*reasons[:_MAX_REASONS], f"… and {len(reasons) - _MAX_REASONS} more"]


def psnr(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class _Chunk:
    root: chunk.ChunkRoot
    manifest: dict[str, Any]
    coco: dict[str, Any]
    by_index: dict[int, dict[str, Any]]
    anns: dict[int, list[dict[str, Any]]]


def _load(root: chunk.ChunkRoot, reasons: list[str], label: str) -> _Chunk | None:
    """The chunk at `root` once its manifest and COCO file pass the schema (synthetic.schema); otherwise None, with
    the reason. Everything here is node-supplied: nothing may raise."""
    try:
        manifest = chunk.read_json(root / chunk.MANIFEST)
        coco = chunk.read_json(root / chunk.ANNOTATIONS)
    except (OSError, ValueError) as exc:
        reasons.append(f"{label}: unreadable chunk ({type(exc).__name__}: {clip(str(exc))})")
        return None
    try:
        schema.check_manifest(manifest)
    except schema.SchemaError as exc:
        reasons.append(f"{label}: {exc}")
        return None
    try:
        checked = schema.check_coco(coco)
    except schema.SchemaError as exc:
        reasons.append(f"{label}: {chunk.ANNOTATIONS} breaks the COCO schema ({exc})")
        return None
    expected = range(manifest["start"], manifest["start"] + manifest["count"])
    if sorted(checked.by_index) != list(expected):
        missing = [i for i in expected if i not in checked.by_index]
        extra = sorted(set(checked.by_index) - set(expected))
        reasons.append(f"{label}: image list wrong (missing {short(missing)}, unexpected {short(extra)})")
    for index, items in checked.anns.items():
        if any(a["category_id"] not in checked.categories for a in items):
            reasons.append(f"{label}: image {index}: annotation with an unknown category_id")
    return _Chunk(root, manifest, coco, checked.by_index, checked.anns)


def _read(ch: _Chunk, pass_name: str, index: int, reasons: list[str], label: str) -> NDArray[Any] | None:
    width, height = ch.manifest["resolution"]
    path = chunk.pass_path(ch.root, pass_name, index)
    try:
        # The manifest's resolution bounds every image before it is inflated (a header may claim any size).
        pixels = chunk.read_png(path, shape=(height, width))
    except (OSError, ValueError) as exc:
        reasons.append(
            f"{label}: image {index}: {pass_name} pass missing or unreadable ({type(exc).__name__}: "
            f"{clip(str(exc), 120)})"
        )
        return None
    if pass_name == "normals" and (pixels.dtype != np.uint16 or pixels.ndim != 3):  # noqa: S105 - a pass name
        reasons.append(f"{label}: image {index}: normals pass is not a 16-bit RGB PNG")
        return None
    if pass_name in _SINGLE_CHANNEL and (pixels.dtype != np.uint16 or pixels.ndim != 2):
        reasons.append(f"{label}: image {index}: {pass_name} pass is not a 16-bit single-channel PNG")
        return None
    if pixels.shape[:2] != (height, width):
        reasons.append(
            f"{label}: image {index}: {pass_name} pass is {pixels.shape[1]}×{pixels.shape[0]}, not {width}×{height}"
        )
        return None
    return pixels


def _self_consistent(ch: _Chunk, index: int, ids: NDArray[Any], reasons: list[str], label: str) -> None:
    """Each annotation must be exactly what its instance mask says: box, area, RLE; one per visible instance."""
    present = {int(v) for v in np.unique(ids) if v}
    items = ch.anns.get(index, [])
    annotated = [a["instance_id"] for a in items]
    if sorted(annotated) != sorted(present):
        reasons.append(
            f"{label}: image {index}: annotations cover instances {short(sorted(annotated))}, "
            f"mask has {short(sorted(present))}"
        )
    width, height = ch.manifest["resolution"]
    checked: set[int] = set()
    for ann in items:
        instance = ann["instance_id"]
        # One check per visible instance: duplicates and strangers are the reason above, and never cost a mask each.
        if instance not in present or instance in checked:
            continue
        checked.add(instance)
        mask = ids == instance
        where = f"{label}: image {index}: annotation {short(ann.get('id'))} (instance {instance})"
        if ann.get("bbox") != bbox_from_mask(mask):
            reasons.append(f"{where}: bbox {short(ann.get('bbox'))} ≠ mask box {bbox_from_mask(mask)}")
        if ann.get("area") != int(mask.sum()):
            reasons.append(f"{where}: area {short(ann.get('area'))} ≠ mask pixels {int(mask.sum())}")
        try:
            rle_ok = np.array_equal(decode_rle(ann.get("segmentation"), (height, width)), mask)
        except ValueError as exc:
            reasons.append(f"{where}: segmentation is not a valid RLE of the image ({exc})")
            continue
        if not rle_ok:
            reasons.append(f"{where}: segmentation RLE does not decode to the instance mask")


def _normals_differ(a: NDArray[Any], b: NDArray[Any]) -> str | None:
    """Why two normals images disagree (foreground pixels, or any angle above NORMALS_MAX_ANGLE_DEG), or None."""
    normals_a, foreground_a = decode_normals(a)
    normals_b, foreground_b = decode_normals(b)
    if not np.array_equal(foreground_a, foreground_b):
        differ = int(np.count_nonzero(foreground_a != foreground_b))
        return f"foreground differs in {differ} pixels (must match exactly)"
    angles = angle_deg(normals_a, normals_b)[foreground_a]
    beyond = int(np.count_nonzero(angles > NORMALS_MAX_ANGLE_DEG))
    if beyond:
        return (
            f"angle exceeds {NORMALS_MAX_ANGLE_DEG}° in {beyond} pixels "
            f"(max {float(angles.max()):.3f}°, mean {float(angles.mean()):.4f}° over the foreground)"
        )
    return None


def _strip_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # instance_id is a checked int (schema.check_coco).
    return sorted(({k: v for k, v in a.items() if k != "id"} for a in items), key=lambda a: int(a["instance_id"]))


def _compare_labels(
    a: _Chunk, b: _Chunk, indices: list[int], reasons: list[str], passes: list[str]
) -> dict[int, NDArray[Any]]:
    ids_a: dict[int, NDArray[Any]] = {}
    for index in indices:
        if index not in a.by_index or index not in b.by_index:
            reasons.append(f"image {index}: missing from {'A' if index not in a.by_index else 'B'}")
            continue
        for pass_name in passes:
            pa = _read(a, pass_name, index, reasons, "A")
            pb = _read(b, pass_name, index, reasons, "B")
            if pa is None or pb is None:
                continue
            if pass_name == "normals":  # noqa: S105 - a pass name, not a secret
                problem = _normals_differ(pa, pb)
                if problem:
                    reasons.append(f"image {index}: normals pass {problem}")
            elif pa.shape != pb.shape or not np.array_equal(pa, pb):
                diff = int(np.count_nonzero(pa != pb)) if pa.shape == pb.shape else pa.size
                reasons.append(f"image {index}: {pass_name} pass differs in {diff} pixels (labels must match exactly)")
            if pass_name == "instance":  # noqa: S105 - a pass name, not a secret
                ids_a[index] = pa
                _self_consistent(a, index, pa, reasons, "A")
                _self_consistent(b, index, pb, reasons, "B")
        if _strip_ids(a.anns.get(index, [])) != _strip_ids(b.anns.get(index, [])):
            reasons.append(f"image {index}: COCO annotations differ (bbox/area/segmentation/visibility)")
        try:
            meta_a = chunk.read_json(chunk.meta_path(a.root, index))
            meta_b = chunk.read_json(chunk.meta_path(b.root, index))
        except (OSError, ValueError):
            reasons.append(f"image {index}: metadata missing or unreadable")
            continue
        if meta_a != meta_b:
            reasons.append(f"image {index}: metadata (seed, camera, lights, objects) differs")
    return ids_a


def _root(where: str | chunk.ChunkRoot) -> chunk.ChunkRoot:
    return where if isinstance(where, ZipRoot) else Path(where)


def compare(dir_a: str | chunk.ChunkRoot, dir_b: str | chunk.ChunkRoot) -> Verdict:
    """Compare two replicas of a chunk: format, then labels exactly and normals within NORMALS_MAX_ANGLE_DEG, then
    RGB (PSNR ≥ RGB_MIN_PSNR_DB per image)."""
    reasons: list[str] = []
    a = _load(_root(dir_a), reasons, "A")
    b = _load(_root(dir_b), reasons, "B")
    if a is None or b is None:
        return Verdict(False, reasons)
    for key in ("spec_digest", "start", "count", "resolution", "passes"):
        if a.manifest.get(key) != b.manifest.get(key):
            reasons.append(f"manifest {key} differs: {short(a.manifest.get(key))} vs {short(b.manifest.get(key))}")
    if reasons:
        return Verdict(False, reasons)
    if a.coco["categories"] != b.coco["categories"]:
        reasons.append("COCO categories differ")
    indices = sorted(set(a.by_index) | set(b.by_index))
    _compare_labels(a, b, indices, reasons, [p for p in LABEL_PASSES if p in a.manifest["passes"]])
    scores = _compare_rgb(a, b, indices, reasons) if "rgb" in a.manifest["passes"] else {}
    return Verdict(not reasons, _cap(reasons), scores)


def _compare_rgb(a: _Chunk, b: _Chunk, indices: list[int], reasons: list[str]) -> dict[int, float]:
    """PSNR of each image's RGB in `a` against `b`; an image below RGB_MIN_PSNR_DB (or missing) adds a reason."""
    scores: dict[int, float] = {}
    for index in indices:
        if index not in a.by_index or index not in b.by_index:
            continue
        ra = _read(a, "rgb", index, reasons, "A")
        rb = _read(b, "rgb", index, reasons, "B")
        if ra is None or rb is None:
            continue
        scores[index] = psnr(ra, rb)
        if scores[index] < RGB_MIN_PSNR_DB:
            reasons.append(f"image {index}: rgb PSNR {scores[index]:.2f} dB < {RGB_MIN_PSNR_DB:.0f} dB")
    return scores


def compare_labels(
    reference: chunk.ChunkRoot, rerender: chunk.ChunkRoot, indices: list[int], *, rgb: bool = False
) -> Verdict:
    """Spot check: the label passes (and normals) of `indices` in chunk `reference` against a re-render, exactly;
    with `rgb` (a full re-render), their RGB too, by the replicas' PSNR rule (RGB_MIN_PSNR_DB)."""
    reasons: list[str] = []
    a = _load(reference, reasons, "chunk")
    b = _load(rerender, reasons, "re-render")
    if a is None or b is None:
        return Verdict(False, reasons)
    if a.manifest.get("spec_digest") != b.manifest.get("spec_digest"):
        reasons.append("chunk was rendered from a different spec")
    if a.manifest["resolution"] != b.manifest["resolution"]:
        reasons.append(f"chunk: resolution {a.manifest['resolution']}, the spec's is {b.manifest['resolution']}")
        return Verdict(False, reasons)
    # The re-render's passes are the spec's: the chunk is checked on every one of them, whatever its manifest says.
    passes = [p for p in LABEL_PASSES if p in b.manifest["passes"]]
    unlisted = [p for p in passes if p not in a.manifest["passes"]]
    if unlisted:
        reasons.append(f"chunk: its manifest lists no {', '.join(unlisted)} pass, the spec asks for it")
    _compare_labels(a, b, indices, reasons, passes)
    scores: dict[int, float] = {}
    # The re-render's passes are the spec's: a spec without RGB has none to check.
    if rgb and "rgb" in b.manifest["passes"]:
        if "rgb" not in a.manifest["passes"]:
            reasons.append("chunk: its manifest lists no rgb pass, the spec asks for one")
        else:
            scores = _compare_rgb(a, b, indices, reasons)
    return Verdict(not reasons, _cap(reasons), scores)
