"""Render passes: Cycles RGB, and Workbench renders read back from EXR: labels (flat ID colours + depth) and
normals (camera-space corner normals as a colour attribute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy  # type: ignore[import-untyped]
import numpy as np
from numpy.typing import NDArray

from synthetic.device import choose_device
from synthetic.exr import read_exr
from synthetic.labels import decode_ids, id_colour
from synthetic.normals import BLENDER_TO_OPENCV
from synthetic.spec import OutputSpec


def setup_device(requested: str) -> str:
    """Point Cycles at CUDA/OptiX when a device exists (and `requested` is 'auto'), else the CPU; return its name."""
    available: dict[str, list[str]] = {}
    if requested == "auto":
        prefs = bpy.context.preferences.addons["cycles"].preferences
        for backend in ("OPTIX", "CUDA"):
            try:
                prefs.compute_device_type = backend
            except TypeError:
                continue
            prefs.refresh_devices()
            available[backend] = [d.name for d in prefs.devices if d.type == backend]
    backend, names = choose_device(available, requested)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    if backend == "NONE":
        scene.cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    prefs.compute_device_type = backend
    for device in prefs.devices:
        device.use = device.type == backend
    scene.cycles.device = "GPU"
    return f"{backend}: {', '.join(names)}"


def render_rgb(path: Path, output: OutputSpec, cycles_seed: int, gpu: bool) -> None:
    """Path-trace the scene with Cycles into an 8-bit sRGB PNG."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "GPU" if gpu else "CPU"
    scene.cycles.samples = output.samples
    # Fixed sample count and seed: adaptive stopping would make the work done depend on timing-free noise
    # estimates, fine for determinism but it blurs what "¼ of the samples" means for the verifier.
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = output.denoise
    scene.cycles.seed = cycles_seed
    scene.cycles.use_animated_seed = False
    scene.cycles.max_bounces = 4
    scene.render.film_transparent = False
    scene.render.dither_intensity = 0.0
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    settings = scene.render.image_settings
    settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_mode = "RGB"
    settings.color_depth = "8"
    settings.compression = 15
    scene.render.use_compositing = False
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


_NORMAL_ATTRIBUTE = "hashwork_normal"


def _workbench(path: Path, colour: str = "OBJECT") -> dict[str, NDArray[Any]]:
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light = "FLAT"
    shading.color_type = colour
    shading.show_cavity = False
    shading.show_shadows = False
    shading.show_object_outline = False
    shading.show_specular_highlight = False
    shading.show_xray = False
    shading.use_dof = False
    # No anti-aliasing: every pixel is exactly one object's ID colour, sampled at its centre.
    scene.display.render_aa = "OFF"
    scene.render.film_transparent = True
    scene.render.dither_intensity = 0.0
    scene.render.use_compositing = False
    scene.view_layers[0].use_pass_z = True
    settings = scene.render.image_settings
    settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.exr_codec = "NONE"
    settings.color_depth = "32"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    try:
        return read_exr(path)
    finally:
        path.unlink(missing_ok=True)


def _channels(channels: dict[str, NDArray[Any]], name: str) -> NDArray[Any]:
    for key, value in channels.items():
        if key.endswith(name):
            return value
    raise KeyError(f"Workbench render has no {name} channel (got {sorted(channels)})")


def render_labels(
    instances: dict[int, list[Any]], props: list[Any], tmp: Path
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Instance ids (uint16), planar depth in metres (float32) and the background mask of the scene."""
    for instance, objects in instances.items():
        for obj in objects:
            obj.color = (*id_colour(instance), 1.0)
    for obj in props:
        obj.color = (0.0, 0.0, 0.0, 1.0)
    channels = _workbench(tmp / "labels.exr")
    alpha = _channels(channels, "Combined.A")
    ids = decode_ids(
        _channels(channels, "Combined.R"), _channels(channels, "Combined.G"), _channels(channels, "Combined.B"), alpha
    )
    unknown = set(np.unique(ids).tolist()) - set(instances) - {0}
    if unknown:
        raise RuntimeError(f"label render produced ids {sorted(unknown)} that no object has")
    return ids, _channels(channels, "Depth.Z"), alpha < 0.5


def render_alone(instances: dict[int, list[Any]], props: list[Any], group: list[int], tmp: Path) -> NDArray[Any]:
    """Instance ids of a render where only `group` (mutually non-overlapping on screen) is visible."""
    members = set(group)
    for obj in props:
        obj.hide_render = True
    for instance, objects in instances.items():
        for obj in objects:
            obj.hide_render = instance not in members
    try:
        channels = _workbench(tmp / "alone.exr")
    finally:
        for obj in props:
            obj.hide_render = False
        for objects in instances.values():
            for obj in objects:
                obj.hide_render = False
    return decode_ids(
        _channels(channels, "Combined.R"),
        _channels(channels, "Combined.G"),
        _channels(channels, "Combined.B"),
        _channels(channels, "Combined.A"),
    )


def _facing_camera(mesh: Any, matrix: Any, normal_matrix: NDArray[Any], eye: NDArray[Any]) -> NDArray[Any]:
    """Per face corner: +1 where its face (in world space) faces the camera at `eye`, −1 where it is a back face."""
    faces = len(mesh.polygons)
    normals = np.empty(faces * 3, dtype=np.float32)
    centres = np.empty(faces * 3, dtype=np.float32)
    sizes = np.empty(faces, dtype=np.int32)
    mesh.polygons.foreach_get("normal", normals)
    mesh.polygons.foreach_get("center", centres)
    mesh.polygons.foreach_get("loop_total", sizes)
    world = np.array(matrix, dtype=np.float64)
    points = centres.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    towards = normals.reshape(-1, 3).astype(np.float64) @ normal_matrix.T
    away = ((points - eye) * towards).sum(axis=1) > 0
    # A mesh's corners are stored face after face (Blender keeps face offsets sorted).
    out: NDArray[Any] = np.repeat(np.where(away, -1.0, 1.0), sizes)
    return out


def render_normals(tmp: Path) -> tuple[NDArray[Any], NDArray[Any]]:
    """Camera-space (OpenCV axes) normals as rasterised (H×W×3, not yet unit length) and the background mask.

    Each mesh gets its corner normals, turned into camera space, as a float colour attribute, and Workbench draws
    that attribute unlit: the same rasteriser and pixel centres as the label render, so the foreground is exactly
    the depth pass's, and no path tracing. Back faces get their normals reversed per face (from the face's own
    normal, as Cycles decides it), so what the camera sees faces it. Normals are the mesh's own (smooth, flat or
    custom split), not a normal map's. Run it after the label renders: it leaves the attribute on the meshes.
    """
    scene = bpy.context.scene
    camera = scene.camera
    to_camera = BLENDER_TO_OPENCV @ np.array(camera.matrix_world.to_3x3().normalized(), dtype=np.float64).T
    eye = np.array(camera.matrix_world.translation, dtype=np.float64)
    for obj in scene.objects:
        if obj.type != "MESH":
            continue
        if obj.data.users > 1:
            # Instanced glTF meshes: each object needs the normals of its own transform.
            obj.data = obj.data.copy()
        mesh = obj.data
        corners = np.empty(len(mesh.loops) * 3, dtype=np.float32)
        mesh.corner_normals.foreach_get("vector", corners)
        to_world = np.array(obj.matrix_world.to_3x3().inverted_safe().transposed(), dtype=np.float64)
        n = corners.reshape(-1, 3).astype(np.float64) @ (to_camera @ to_world).T
        length = np.maximum(np.sqrt((n * n).sum(axis=1)), 1e-12)
        n *= (_facing_camera(mesh, obj.matrix_world, to_world, eye) / length)[:, None]
        rgba = np.ones((len(n), 4), dtype=np.float32)
        rgba[:, :3] = n
        attribute = mesh.color_attributes.new(_NORMAL_ATTRIBUTE, "FLOAT_COLOR", "CORNER")
        attribute.data.foreach_set("color", rgba.ravel())
        mesh.color_attributes.active_color = attribute
    channels = _workbench(tmp / "normals.exr", colour="VERTEX")
    raw = np.stack([_channels(channels, f"Combined.{c}") for c in "RGB"], axis=-1)
    return raw, _channels(channels, "Combined.A") < 0.5
