"""Build a planned image in Blender: props, products (procedural or glTF), camera, lights, world."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import bpy  # type: ignore[import-untyped]
from mathutils import Matrix, Vector  # type: ignore[import-not-found]

from synthetic.blender import materials
from synthetic.geometry import Mesh, box_mesh, product_mesh
from synthetic.plan import Box, ImagePlan, Product


def clear() -> None:
    """Remove every object and data block of the previous image (the scene and its settings stay)."""
    scene = bpy.context.scene
    for obj in list(scene.collection.objects):
        scene.collection.objects.unlink(obj)
    for collection in (
        bpy.data.objects,
        bpy.data.meshes,
        bpy.data.materials,
        bpy.data.images,
        bpy.data.lights,
        bpy.data.cameras,
        bpy.data.worlds,
        bpy.data.collections,
        bpy.data.textures,
        bpy.data.node_groups,
        bpy.data.actions,
    ):
        bpy.data.batch_remove(list(collection))


def _mesh_object(name: str, mesh: Mesh, material: Any) -> Any:
    data = bpy.data.meshes.new(name)
    data.from_pydata([tuple(v) for v in mesh.vertices.tolist()], [], mesh.faces)
    uv = data.uv_layers.new(name="UVMap")
    flat = [c for pair in mesh.uvs for c in pair]
    uv.data.foreach_set("uv", flat)
    data.validate()
    data.materials.append(material)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _prop(box: Box) -> Any:
    if box.round:
        mesh = product_mesh("can", box.size[0], box.size[1], box.size[2])
    else:
        mesh = box_mesh(box.size[0], box.size[1], box.size[2])
    obj = _mesh_object(box.name, mesh, materials.plain(box.name, box.colour))
    obj.location = (box.centre[0], box.centre[1], box.centre[2] - box.size[2] / 2)
    return obj


def _import_asset(item: Product, asset_dir: Path) -> list[Any]:
    path = (asset_dir / (item.asset_path or "")).resolve()
    if not path.is_relative_to(asset_dir.resolve()) or not path.is_file():
        raise FileNotFoundError(f"asset {item.asset_path!r} not found under {asset_dir}")
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=str(path))
    imported = [obj for obj in bpy.data.objects if obj not in before]
    meshes = [obj for obj in imported if obj.type == "MESH"]
    if not meshes:
        raise ValueError(f"asset {item.asset_path!r} has no mesh")
    bpy.context.view_layer.update()
    corners = [obj.matrix_world @ Vector(c) for obj in meshes for c in obj.bound_box]
    lo = Vector((min(c.x for c in corners), min(c.y for c in corners), min(c.z for c in corners)))
    hi = Vector((max(c.x for c in corners), max(c.y for c in corners), max(c.z for c in corners)))
    extent = hi - lo
    w, d, h = item.size
    scale = min(h / max(extent.z, 1e-6), w / max(extent.x, 1e-6), d / max(extent.y, 1e-6))
    base = Vector(((lo.x + hi.x) / 2, (lo.y + hi.y) / 2, lo.z))
    transform = (
        Matrix.Translation(Vector(item.location))
        @ Matrix.Rotation(item.yaw, 4, "Z")
        @ Matrix.Scale(scale, 4)
        @ Matrix.Translation(-base)
    )
    for obj in imported:
        if obj.parent is None:
            obj.matrix_world = transform @ obj.matrix_world
        obj.name = f"product_{item.instance_id}_{obj.name}"
    return meshes


def _product(item: Product, asset_dir: Path) -> list[Any]:
    if item.kind == "asset":
        return _import_asset(item, asset_dir)
    w, d, h = item.size
    obj = _mesh_object(f"product_{item.instance_id}", product_mesh(item.kind, w, d, h), materials.product(item))
    obj.location = item.location
    obj.rotation_euler = (0.0, 0.0, item.yaw)
    return [obj]


def _aim(obj: Any, target: tuple[float, float, float]) -> None:
    direction = Vector(target) - obj.location
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def build(plan: ImagePlan, asset_dir: Path) -> tuple[dict[int, list[Any]], list[Any]]:
    """Create the scene of `plan`; return (instance id → its mesh objects, unlabelled prop objects)."""
    clear()
    scene = bpy.context.scene
    props = [_prop(box) for box in plan.props]
    instances = {item.instance_id: _product(item, asset_dir) for item in plan.products}

    cam_data = bpy.data.cameras.new("camera")
    cam_data.lens = plan.camera.focal_mm
    cam_data.sensor_width = 36.0
    cam_data.clip_start = 0.05
    cam_data.clip_end = 100.0
    camera = bpy.data.objects.new("camera", cam_data)
    scene.collection.objects.link(camera)
    camera.location = plan.camera.location
    _aim(camera, plan.camera.target)
    scene.camera = camera

    for k, light in enumerate(plan.lights):
        data = bpy.data.lights.new(f"light_{k}", "AREA")
        data.energy = light.energy_w
        data.color = light.colour
        data.size = light.size_m
        obj = bpy.data.objects.new(f"light_{k}", data)
        scene.collection.objects.link(obj)
        obj.location = light.location
        _aim(obj, light.target)

    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (*plan.world_colour, 1.0)
    background.inputs["Strength"].default_value = plan.world_strength
    world.color = plan.world_colour
    scene.world = world
    scene.render.resolution_x, scene.render.resolution_y = plan.resolution
    scene.render.resolution_percentage = 100
    bpy.context.view_layer.update()
    return instances, props


def screen_box(objects: list[Any]) -> tuple[float, float, float, float] | None:
    """Pixel box (x0, y0, x1, y1, top-left origin) around the objects' bounding boxes; None if behind the camera."""
    from bpy_extras.object_utils import world_to_camera_view  # type: ignore[import-not-found]

    scene = bpy.context.scene
    width, height = scene.render.resolution_x, scene.render.resolution_y
    xs: list[float] = []
    ys: list[float] = []
    for obj in objects:
        for corner in obj.bound_box:
            ndc = world_to_camera_view(scene, scene.camera, obj.matrix_world @ Vector(corner))
            if ndc.z <= scene.camera.data.clip_start:
                return None
            xs.append(ndc.x * width)
            ys.append((1.0 - ndc.y) * height)
    # A pixel's centre decides coverage; one pixel of slack keeps the test conservative.
    return (math.floor(min(xs)) - 1, math.floor(min(ys)) - 1, math.ceil(max(xs)) + 1, math.ceil(max(ys)) + 1)
