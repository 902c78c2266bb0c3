"""Blender-side modules: the only part of `synthetic` that imports bpy (run inside the render child)."""
