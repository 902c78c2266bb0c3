"""Materials: textured Principled BSDF for products, plain ones for props."""

from __future__ import annotations

from typing import Any

import bpy  # type: ignore[import-untyped]
import numpy as np

from synthetic.plan import Product
from synthetic.textures import label_texture


def plain(name: str, colour: tuple[float, float, float], roughness: float = 0.8) -> Any:
    """A diffuse-ish material of one colour."""
    mat = bpy.data.materials.new(name)
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def product(item: Product) -> Any:
    """The label-textured material of a procedural product."""
    mat = bpy.data.materials.new(f"product_{item.instance_id}")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = item.roughness
    bsdf.inputs["Specular IOR Level"].default_value = item.specular
    pixels = label_texture(item.label_style, item.colours, item.texture_seed)
    height, width = pixels.shape[:2]
    image = bpy.data.images.new(f"label_{item.instance_id}", width=width, height=height, alpha=True, float_buffer=True)
    # Blender stores images bottom row first.
    image.pixels.foreach_set(np.ascontiguousarray(pixels[::-1]).ravel())
    image.pack()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat
