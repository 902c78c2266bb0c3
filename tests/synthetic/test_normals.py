"""The normals pass: its encoding without Blender, then real renders (small chunks), their verification and merge."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthetic import chunk, compare, merge, render_chunk, spot_check
from synthetic.normals import angle_deg, camera_normals, decode_normals, encode_normals
from tests.synthetic.helpers import small_spec, write_glb


def _tilted(normals: np.ndarray, degrees: float) -> np.ndarray:
    """Each unit normal turned by exactly `degrees`, about an axis perpendicular to it."""
    axis = np.cross(normals, (0.6, 0.48, 0.64))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    a = np.radians(degrees)
    out: np.ndarray = normals * np.cos(a) + np.cross(axis, normals) * np.sin(a)
    return out


def test_encoding_keeps_unit_normals_to_within_a_thousandth_of_a_degree() -> None:
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(32, 32, 3)) * rng.uniform(0.5, 2.0, size=(32, 32, 1))
    background = np.zeros((32, 32), dtype=bool)
    background[:4] = True
    unit = camera_normals(raw, background)
    decoded, foreground = decode_normals(encode_normals(unit, background))
    assert np.array_equal(foreground, ~background)
    assert np.all(decoded[background] == 0)
    assert np.allclose(np.linalg.norm(decoded[foreground], axis=-1), 1.0)
    assert angle_deg(unit, decoded)[foreground].max() < 0.002


def test_a_pixel_whose_corner_normals_cancel_faces_the_camera() -> None:
    raw = np.zeros((1, 2, 3))
    raw[0, 1] = (0.0, 0.0, 3.0)
    assert camera_normals(raw, np.zeros((1, 2), dtype=bool)).tolist() == [[[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]]


def test_angles_are_accurate_down_to_hundredths_of_a_degree() -> None:
    n = np.array([[[0.0, 0.0, -1.0], [0.6, 0.0, -0.8], [0.0, 1.0, 0.0]]])
    for degrees in (0.01, 0.05, 3.0):
        assert np.allclose(angle_deg(n, _tilted(n, degrees)), degrees, atol=1e-9)


@dataclass
class Rendered:
    spec: dict[str, Any]
    assets: Path
    shelf: Path
    replica: Path
    far_table: Path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """A 2-image shelf chunk with RGB and normals, its replica from another process, and a far-off table (sky)."""
    root = tmp_path_factory.mktemp("normals")
    assets = root / "assets"
    assets.mkdir()
    write_glb(assets / "widget.glb")
    spec = small_spec(
        output={"resolution": [128, 128], "samples": 4, "passes": ["rgb", "instance", "depth", "normals"]}
    )
    render_chunk(spec, 0, 2, root / "shelf", asset_dir=assets, device="cpu")
    render_chunk(spec, 0, 2, root / "replica", asset_dir=assets, device="cpu")
    # From 25 m the 20 m floor leaves sky around it: pixels where nothing is hit.
    far = small_spec(
        scene={"template": "table"},
        randomization={"camera": {"distance_m": [25, 25], "focal_mm": [20, 20]}},
        output={"resolution": [64, 64], "passes": ["instance", "depth", "normals"]},
    )
    render_chunk(far, 0, 1, root / "far", asset_dir=assets, device="cpu")
    return Rendered(spec, assets, root / "shelf", root / "replica", root / "far")


def _normals(root: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    return decode_normals(chunk.read_png(chunk.pass_path(root, "normals", index)))


def _camera_frame(root: Path, index: int, world: tuple[float, float, float]) -> np.ndarray:
    """A world direction in the image's OpenCV camera axes, from the camera's location and target in the metadata."""
    camera = chunk.read_json(chunk.meta_path(root, index))["camera"]
    forward = np.subtract(camera["target"], camera["location"])
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    v = np.array(world)
    return np.array([v @ right, -(v @ up), v @ forward])


def _rays(root: Path, index: int, width: int, height: int) -> np.ndarray:
    """Unit rays through the pixel centres (OpenCV axes) of the 36 mm wide pinhole camera in the metadata."""
    focal_px = chunk.read_json(chunk.meta_path(root, index))["camera"]["focal_mm"] / 36.0 * max(width, height)
    v, u = np.mgrid[0:height, 0:width]
    rays = np.stack([(u + 0.5 - width / 2) / focal_px, (v + 0.5 - height / 2) / focal_px, np.ones((height, width))], -1)
    out: np.ndarray = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    return out


def test_normals_are_16_bit_rgb_images_listed_in_the_manifest(rendered: Rendered) -> None:
    assert chunk.read_json(rendered.shelf / chunk.MANIFEST)["passes"] == ["rgb", "instance", "depth", "normals"]
    for index in (0, 1):
        pixels = chunk.read_png(chunk.pass_path(rendered.shelf, "normals", index))
        assert (pixels.dtype, pixels.shape) == (np.uint16, (128, 128, 3))


def test_normals_are_unit_length_where_something_was_hit_and_zero_elsewhere(rendered: Rendered) -> None:
    for root, index in ((rendered.shelf, 0), (rendered.shelf, 1), (rendered.far_table, 0)):
        normals, foreground = _normals(root, index)
        depth = chunk.read_png(chunk.pass_path(root, "depth", index))
        assert np.array_equal(foreground, depth > 0)
        assert np.all(chunk.read_png(chunk.pass_path(root, "normals", index))[~foreground] == 0)
        assert np.allclose(np.linalg.norm(normals[foreground], axis=-1), 1.0)
    assert (~_normals(rendered.far_table, 0)[1]).sum() > 1000


def test_every_visible_surface_faces_the_camera(rendered: Rendered) -> None:
    # Some procedural faces are wound inwards; Cycles shades them from the side the camera sees, and so do normals.
    for index in (0, 1):
        normals, foreground = _normals(rendered.shelf, index)
        facing = (normals * _rays(rendered.shelf, index, 128, 128)).sum(axis=-1)
        assert facing[foreground].max() < 0


def test_the_shelf_back_and_the_floor_have_the_normals_the_camera_should_see(rendered: Rendered) -> None:
    for root, index, world in ((rendered.shelf, 0, (0.0, -1.0, 0.0)), (rendered.far_table, 0, (0.0, 0.0, 1.0))):
        normals, foreground = _normals(root, index)
        expected = _camera_frame(root, index, world)
        close = angle_deg(normals, np.broadcast_to(expected, normals.shape))[foreground] < 0.1
        # The wall and shelf back (facing −y), or the floor and table top (facing +z), fill much of the view.
        assert close.mean() > 0.3, (root.name, close.mean())


def test_two_processes_give_identical_normals(rendered: Rendered) -> None:
    for index in (0, 1):
        a = chunk.read_png(chunk.pass_path(rendered.shelf, "normals", index))
        b = chunk.read_png(chunk.pass_path(rendered.replica, "normals", index))
        assert np.array_equal(a, b)
    verdict = compare(rendered.shelf, rendered.replica)
    assert verdict.ok, verdict.reasons


def _tampered(rendered: Rendered, target: Path, change: str) -> Path:
    shutil.copytree(rendered.replica, target)
    path = chunk.pass_path(target, "normals", 1)
    normals, foreground = decode_normals(chunk.read_png(path))
    if change == "turned":
        normals[40:50, 40:50] = _tilted(normals[40:50, 40:50], 0.2)
    elif change == "8-bit":
        normals = np.rint((normals + 1) / 2 * 255) / 255 * 2 - 1
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    else:
        foreground[:5] = False
    chunk.write_png(path, encode_normals(normals, ~foreground))
    return target


def test_compare_rejects_tampered_normals_naming_image_pass_and_metric(rendered: Rendered, tmp_path: Path) -> None:
    turned = compare(rendered.shelf, _tampered(rendered, tmp_path / "turned", "turned"))
    assert not turned.ok
    assert len(turned.reasons) == 1
    assert turned.reasons[0].startswith("image 1: normals pass angle exceeds 0.05° in 100 pixels (max 0.2")
    requantised = compare(rendered.shelf, _tampered(rendered, tmp_path / "8bit", "8-bit"))
    assert [r.split(" in ")[0] for r in requantised.reasons] == ["image 1: normals pass angle exceeds 0.05°"]
    cut = compare(rendered.shelf, _tampered(rendered, tmp_path / "cut", "foreground"))
    assert cut.reasons == ["image 1: normals pass foreground differs in 640 pixels (must match exactly)"]


def test_a_spot_check_re_renders_the_normals_too(rendered: Rendered, tmp_path: Path) -> None:
    assert spot_check(rendered.spec, rendered.shelf, 1, asset_dir=rendered.assets).ok
    bad = _tampered(rendered, tmp_path / "bad", "turned")
    verdict = spot_check(rendered.spec, bad, 1, asset_dir=rendered.assets)
    assert not verdict.ok
    assert all(r.startswith("image 1: normals pass angle exceeds") for r in verdict.reasons)


def test_the_merged_dataset_carries_the_normals(rendered: Rendered, tmp_path: Path) -> None:
    merge([rendered.shelf], tmp_path / "ds.zip")
    with zipfile.ZipFile(tmp_path / "ds.zip") as zf:
        for index in (0, 1):
            name = f"normals/{chunk.stem(index)}.png"
            assert zf.read(name) == chunk.pass_path(rendered.shelf, "normals", index).read_bytes()
