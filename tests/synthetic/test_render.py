"""With Blender: real chunk renders (128², few samples) shared across tests, and the verifier on real output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from synthetic import RGB_MIN_PSNR_DB, chunk, compare, merge, render_chunk, spot_check
from synthetic.labels import bbox_from_mask, decode_rle
from synthetic.render import RenderError
from tests.synthetic.helpers import small_spec, write_glb


@dataclass
class Rendered:
    spec: dict[str, Any]
    assets: Path
    honest: Path
    replica: Path
    lazy: Path
    other_seed: Path
    seconds: float


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """One 4-image chunk, its replica from a second child process, a ¼-samples copy and another seed's image 0."""
    root = tmp_path_factory.mktemp("render")
    assets = root / "assets"
    assets.mkdir()
    write_glb(assets / "widget.glb")
    spec = small_spec()
    started = time.monotonic()
    render_chunk(spec, 0, 4, root / "honest", asset_dir=assets, device="cpu")
    seconds = time.monotonic() - started
    render_chunk(spec, 0, 4, root / "replica", asset_dir=assets, device="cpu")
    lazy_spec = small_spec(output={"resolution": [128, 128], "samples": 2})
    render_chunk(lazy_spec, 0, 4, root / "lazy", asset_dir=assets, device="cpu")
    render_chunk(small_spec(seed=12), 0, 1, root / "other", asset_dir=assets, device="cpu")
    return Rendered(spec, assets, root / "honest", root / "replica", root / "lazy", root / "other", seconds)


def _coco(root: Path) -> dict[str, Any]:
    return dict(chunk.read_json(root / chunk.ANNOTATIONS))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_four_image_chunk_renders_in_seconds_without_the_opt_in_normals(rendered: Rendered) -> None:
    assert rendered.seconds < 60
    manifest = chunk.read_json(rendered.honest / chunk.MANIFEST)
    assert (manifest["start"], manifest["count"], manifest["device"]) == (0, 4, "CPU")
    for index in range(4):
        for name in ("rgb", "instance", "category", "depth"):
            pixels = chunk.read_png(chunk.pass_path(rendered.honest, name, index))
            assert pixels.shape[:2] == (128, 128)
    assert "normals" not in manifest["passes"]
    assert not (rendered.honest / "normals").exists()
    assert not list(rendered.honest.glob(".render-*"))


def test_every_mask_agrees_with_its_box_area_and_category(rendered: Rendered) -> None:
    coco = _coco(rendered.honest)
    index_of = {img["id"]: img["index"] for img in coco["images"]}
    assert len(coco["annotations"]) >= 8
    for ann in coco["annotations"]:
        index = index_of[ann["image_id"]]
        ids = chunk.read_png(chunk.pass_path(rendered.honest, "instance", index))
        categories = chunk.read_png(chunk.pass_path(rendered.honest, "category", index))
        mask = ids == ann["instance_id"]
        assert ann["bbox"] == bbox_from_mask(mask)
        assert ann["area"] == int(mask.sum())
        assert np.array_equal(decode_rle(ann["segmentation"]), mask)
        assert set(np.unique(categories[mask]).tolist()) == {ann["category_id"]}
        assert 0 < ann["visible_fraction"] <= 1
    assert any(ann["visible_fraction"] < 1 for ann in coco["annotations"])


def test_depth_is_millimetres_where_something_was_hit(rendered: Rendered) -> None:
    depth = chunk.read_png(chunk.pass_path(rendered.honest, "depth", 0))
    ids = chunk.read_png(chunk.pass_path(rendered.honest, "instance", 0))
    on_products = depth[ids > 0]
    # Products stand 0.5–3 m from the camera in this spec.
    assert on_products.min() > 300
    assert on_products.max() < 4000


def test_the_merged_dataset_loads_in_pycocotools_and_reproduces_the_masks(rendered: Rendered, tmp_path: Path) -> None:
    out = tmp_path / "ds.zip"
    merge([rendered.honest], out)
    shutil.unpack_archive(out, tmp_path / "ds")
    coco = COCO(str(tmp_path / "ds" / "annotations.json"))
    assert len(coco.getImgIds()) == 4
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        ids = chunk.read_png(tmp_path / "ds" / "instance" / f"{chunk.stem(image['index'])}.png")
        assert np.array_equal(coco.annToMask(ann).astype(bool), ids == ann["instance_id"])


def test_the_same_spec_in_two_processes_gives_identical_labels_and_rgb(rendered: Rendered) -> None:
    for index in range(4):
        for name in ("rgb", "instance", "category", "depth"):
            a = chunk.read_png(chunk.pass_path(rendered.honest, name, index))
            b = chunk.read_png(chunk.pass_path(rendered.replica, name, index))
            assert np.array_equal(a, b), (index, name)
    assert _coco(rendered.honest) == _coco(rendered.replica)


def test_a_different_seed_gives_a_different_scene(rendered: Rendered) -> None:
    a = chunk.read_png(chunk.pass_path(rendered.honest, "instance", 0))
    b = chunk.read_png(chunk.pass_path(rendered.other_seed, "instance", 0))
    assert np.count_nonzero(a != b) > a.size // 20
    assert chunk.read_json(chunk.meta_path(rendered.honest, 0)) != chunk.read_json(
        chunk.meta_path(rendered.other_seed, 0)
    )


def test_the_gltf_asset_is_placed_and_labelled_with_its_category(rendered: Rendered) -> None:
    coco = _coco(rendered.honest)
    widget = next(c["id"] for c in coco["categories"] if c["name"] == "widget")
    widgets = [a for a in coco["annotations"] if a["category_id"] == widget]
    assert widgets
    assert all(a["area"] > 5 for a in widgets)


def test_an_honest_replica_pair_is_accepted(rendered: Rendered) -> None:
    verdict = compare(rendered.honest, rendered.replica)
    assert verdict.ok, verdict.reasons
    assert all(v == float("inf") for v in verdict.psnr_db.values())


def test_a_lazy_render_with_fewer_samples_is_rejected_for_its_rgb(rendered: Rendered) -> None:
    verdict = compare(rendered.honest, rendered.lazy)
    assert not verdict.ok
    # Labels do not depend on samples: only RGB can give the lazy node away.
    assert verdict.reasons
    assert all("rgb PSNR" in r or "spec_digest" in r for r in verdict.reasons)


def test_lazy_render_is_rejected_by_psnr_when_the_manifest_lies(rendered: Rendered, tmp_path: Path) -> None:
    lazy = _copy(rendered.lazy, tmp_path / "lazy")
    manifest = chunk.read_json(lazy / chunk.MANIFEST)
    manifest["spec_digest"] = chunk.read_json(rendered.honest / chunk.MANIFEST)["spec_digest"]
    chunk.write_json(lazy / chunk.MANIFEST, manifest)
    verdict = compare(rendered.honest, lazy)
    assert not verdict.ok
    assert all("rgb PSNR" in r for r in verdict.reasons)
    assert len(verdict.reasons) == 4
    assert max(verdict.psnr_db.values()) < 40


def test_a_tampered_mask_is_rejected(rendered: Rendered, tmp_path: Path) -> None:
    bad = _copy(rendered.replica, tmp_path / "bad")
    path = chunk.pass_path(bad, "instance", 2)
    ids = chunk.read_png(path)
    ids[ids == ids.max()] = 0
    chunk.write_png(path, ids)
    verdict = compare(rendered.honest, bad)
    assert not verdict.ok
    assert any(r.startswith("image 2: instance pass differs") for r in verdict.reasons)


def test_a_shifted_box_is_rejected(rendered: Rendered, tmp_path: Path) -> None:
    bad = _copy(rendered.replica, tmp_path / "bad")
    coco = _coco(bad)
    coco["annotations"][0]["bbox"][0] += 1
    chunk.write_json(bad / chunk.ANNOTATIONS, coco)
    verdict = compare(rendered.honest, bad)
    assert not verdict.ok
    assert any("bbox" in r and "mask box" in r for r in verdict.reasons)


def test_a_missing_image_is_rejected(rendered: Rendered, tmp_path: Path) -> None:
    bad = _copy(rendered.replica, tmp_path / "bad")
    chunk.pass_path(bad, "rgb", 3).unlink()
    verdict = compare(rendered.honest, bad)
    assert not verdict.ok
    assert any(r.startswith("B: image 3: rgb pass missing") for r in verdict.reasons)


def test_a_swapped_image_is_rejected(rendered: Rendered, tmp_path: Path) -> None:
    bad = _copy(rendered.replica, tmp_path / "bad")
    for name in ("rgb", "instance", "category", "depth"):
        a, b = chunk.pass_path(bad, name, 1), chunk.pass_path(bad, name, 2)
        a.rename(a.with_suffix(".tmp"))
        b.rename(a)
        a.with_suffix(".tmp").rename(b)
    verdict = compare(rendered.honest, bad)
    assert not verdict.ok
    assert any(r.startswith("image 1: instance pass differs") for r in verdict.reasons)
    assert verdict.psnr_db[1] < RGB_MIN_PSNR_DB
    assert verdict.psnr_db[2] < RGB_MIN_PSNR_DB


def test_a_spot_check_accepts_honest_labels_and_rejects_tampered_ones(rendered: Rendered, tmp_path: Path) -> None:
    verdict = spot_check(rendered.spec, rendered.honest, 1, asset_dir=rendered.assets)
    assert verdict.ok, verdict.reasons
    bad = _copy(rendered.honest, tmp_path / "bad")
    path = chunk.pass_path(bad, "depth", 1)
    depth = chunk.read_png(path)
    depth[10:20, 10:20] += 7
    chunk.write_png(path, depth)
    verdict = spot_check(rendered.spec, bad, 1, asset_dir=rendered.assets)
    assert not verdict.ok
    assert any("depth pass differs in 100 pixels" in r for r in verdict.reasons)


def test_a_full_spot_check_passes_an_honest_chunk_and_fails_a_lazy_one_by_its_rgb(
    rendered: Rendered, tmp_path: Path
) -> None:
    started = time.monotonic()
    verdict = spot_check(rendered.spec, rendered.honest, 2, asset_dir=rendered.assets, full=True)
    seconds = time.monotonic() - started
    assert verdict.ok, verdict.reasons
    assert verdict.psnr_db == {2: float("inf")}
    assert seconds < 30  # one image, path-traced with the spec's samples (measured: ~1 s at 128², 8 spp)
    # A lazy chunk (¼ of the samples) whose manifest claims the honest spec: its labels are identical, so the
    # labels-only check would pass it; the full one fails it on RGB alone.
    lazy = _copy(rendered.lazy, tmp_path / "lazy")
    manifest = chunk.read_json(lazy / chunk.MANIFEST)
    manifest["spec_digest"] = chunk.read_json(rendered.honest / chunk.MANIFEST)["spec_digest"]
    chunk.write_json(lazy / chunk.MANIFEST, manifest)
    assert spot_check(rendered.spec, lazy, 2, asset_dir=rendered.assets).ok
    verdict = spot_check(rendered.spec, lazy, 2, asset_dir=rendered.assets, full=True)
    assert not verdict.ok
    (reason,) = verdict.reasons
    assert reason.startswith("image 2: rgb PSNR ")
    assert reason.endswith(f"< {RGB_MIN_PSNR_DB:.0f} dB")
    assert verdict.psnr_db[2] < 40


def test_a_failing_child_raises_and_leaves_no_temp_files(tmp_path: Path) -> None:
    # No widget.glb under tmp_path: the child fails when it imports the asset.
    spec = small_spec()
    spec["catalog"] = spec["catalog"][5:]
    with pytest.raises(RenderError, match=r"asset 'widget\.glb' not found"):
        render_chunk(spec, 0, 1, tmp_path / "out", asset_dir=tmp_path, device="cpu")
    assert not list((tmp_path / "out").glob(".render-*"))


def test_the_cli_compares_and_reports_spec_errors_by_path(rendered: Rendered, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "synthetic"]
    ok = subprocess.run([*cli, "compare", str(rendered.honest), str(rendered.replica)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ACCEPT")
    lazy = subprocess.run([*cli, "compare", str(rendered.honest), str(rendered.lazy)], capture_output=True, text=True)
    assert lazy.returncode == 1
    assert "REJECT" in lazy.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(small_spec(output={"resolution": [128]})))
    out = subprocess.run([*cli, "render", str(bad), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2
    assert "output.resolution[1]: Field required" in out.stderr


def test_the_table_template_renders_labelled_products(rendered: Rendered, tmp_path: Path) -> None:
    spec = small_spec(scene={"template": "table"})
    render_chunk(spec, 5, 1, tmp_path / "table", asset_dir=rendered.assets, device="cpu")
    coco = _coco(tmp_path / "table")
    assert [img["index"] for img in coco["images"]] == [5]
    assert len(coco["annotations"]) >= 3
