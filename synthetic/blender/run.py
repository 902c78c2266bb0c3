"""The linear render entry: spec → plan → scene → RGB → label passes → normals → labels written, per image."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy  # type: ignore[import-untyped]

from synthetic import chunk
from synthetic.blender import passes, scene
from synthetic.labels import annotations_for_image, category_mask, depth_mm, disjoint_groups, pixel_counts
from synthetic.normals import camera_normals, encode_normals
from synthetic.plan import plan_image
from synthetic.spec import RenderSpec


def render_range(
    spec: RenderSpec,
    start: int,
    count: int,
    out_dir: Path,
    tmp: Path,
    asset_dir: Path,
    *,
    labels_only: bool = False,
    device: str = "auto",
    progress: Callable[[int], None] = lambda done: None,
) -> dict[str, Any]:
    """Render images [start, start+count) of `spec` into `out_dir` and write its manifest and COCO file."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    device_name = "none (labels only)" if labels_only else passes.setup_device(device)
    gpu = device_name not in ("CPU", "none (labels only)")
    categories = spec.categories()
    category_ids = {name: k + 1 for k, name in enumerate(categories)}
    width, height = spec.output.resolution
    wanted = set(spec.output.passes)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    started = time.monotonic()
    for index in range(start, start + count):
        plan = plan_image(spec, index)
        instances, props = scene.build(plan, asset_dir)
        if "rgb" in wanted and not labels_only:
            rgb = chunk.pass_path(tmp, "rgb", index)
            passes.render_rgb(rgb, spec.output, plan.cycles_seed, gpu)
            chunk.pass_path(out_dir, "rgb", index).parent.mkdir(parents=True, exist_ok=True)
            rgb.replace(chunk.pass_path(out_dir, "rgb", index))
        ids, z, background = passes.render_labels(instances, props, tmp)
        boxes = {instance: scene.screen_box(instances[instance]) for instance in sorted(pixel_counts(ids))}
        alone: dict[int, int] = {}
        for group in disjoint_groups(boxes):
            alone_ids = passes.render_alone(instances, props, group, tmp)
            counts = pixel_counts(alone_ids)
            alone.update({instance: counts.get(instance, 0) for instance in group})
        category_of = {item.instance_id: category_ids[item.category] for item in plan.products}
        chunk.write_png(chunk.pass_path(out_dir, "instance", index), ids)
        if "category" in wanted:
            chunk.write_png(chunk.pass_path(out_dir, "category", index), category_mask(ids, category_of))
        if "depth" in wanted:
            chunk.write_png(chunk.pass_path(out_dir, "depth", index), depth_mm(z, background))
        if "normals" in wanted:
            raw, empty = passes.render_normals(tmp)
            normals = encode_normals(camera_normals(raw, empty), empty)
            chunk.write_png(chunk.pass_path(out_dir, "normals", index), normals)
        meta = plan.to_json()
        chunk.write_json(chunk.meta_path(out_dir, index), meta)
        image_id = index + 1
        primary = "rgb" if "rgb" in wanted else "instance"
        images.append(
            {
                "id": image_id,
                "index": index,
                "file_name": f"{chunk.PASS_DIRS[primary]}/{chunk.stem(index)}.png",
                "width": width,
                "height": height,
                "seed": plan.image_seed,
            }
        )
        annotations.extend(annotations_for_image(ids, image_id, category_of, alone, len(annotations) + 1))
        progress(index - start + 1)
    coco = {
        "info": {"description": "Hashwork synthetic render", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": chunk.coco_categories(categories),
    }
    chunk.write_json(out_dir / chunk.ANNOTATIONS, coco)
    manifest = {
        "format": chunk.CHUNK_FORMAT,
        "spec_digest": spec.digest(),
        "start": start,
        "count": count,
        "resolution": [width, height],
        "passes": [p for p in spec.output.passes if not (labels_only and p == "rgb")],
        "device": device_name,
        "seconds": round(time.monotonic() - started, 3),
    }
    chunk.write_json(out_dir / chunk.MANIFEST, manifest)
    return manifest
