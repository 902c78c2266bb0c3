"""Blender scene generation and labeled rendering for synthetic datasets (bpy is imported only in `blender/`).

The marketplace calls `validate_spec`, `render_chunk`, `compare`, `spot_check` and `merge`.
"""

from __future__ import annotations

from synthetic.compare import NORMALS_MAX_ANGLE_DEG, RGB_MIN_PSNR_DB, Verdict, compare
from synthetic.merge import MergeError, merge
from synthetic.render import RenderError, render_chunk, spot_check
from synthetic.spec import RenderSpec, SpecError, validate_spec

__all__ = [
    "NORMALS_MAX_ANGLE_DEG",
    "RGB_MIN_PSNR_DB",
    "MergeError",
    "RenderError",
    "RenderSpec",
    "SpecError",
    "Verdict",
    "compare",
    "merge",
    "render_chunk",
    "spot_check",
    "validate_spec",
]
