"""Surface normals in camera space (OpenCV axes: x right, y down, z forward) and their 16-bit RGB encoding; no bpy.

Encoding: each unit normal component n ∈ [-1, 1] is stored as round((n + 1) / 2 · 65535); pixels where nothing
was hit are (0, 0, 0), which no unit normal encodes to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

SCALE = 65535.0
# Blender's camera looks down −z with y up; OpenCV's looks down +z with y down.
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def _dot(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    # Written out rather than np.linalg.norm or .sum() so the summation order is the same on every machine.
    out: NDArray[Any] = a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]
    return out


def _length(v: NDArray[Any]) -> NDArray[Any]:
    out: NDArray[Any] = np.sqrt(_dot(v, v))
    return out


def camera_normals(raw: NDArray[Any], background: NDArray[Any]) -> NDArray[Any]:
    """Unit normals (H×W×3 float64, zero on `background`) from rasterised, interpolated camera-space normals."""
    n = raw.astype(np.float64)
    # Opposite corner normals can cancel inside a (tiny) triangle: call that pixel facing the camera.
    n = np.where((_length(n) < 1e-6)[..., None], np.array([0.0, 0.0, -1.0]), n)
    n = n / _length(n)[..., None]
    out: NDArray[Any] = np.where(background[..., None], 0.0, n)
    return out


def encode_normals(normals: NDArray[Any], background: NDArray[Any]) -> NDArray[Any]:
    """uint16 H×W×3 pixels of unit normals; (0, 0, 0) on `background`."""
    encoded: NDArray[Any] = np.rint((np.clip(normals, -1.0, 1.0) + 1.0) * (SCALE / 2.0)).astype(np.uint16)
    encoded[background] = 0
    return encoded


def decode_normals(pixels: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(unit normals H×W×3 float64, zero off the foreground; foreground mask) of an encoded normals image."""
    foreground = pixels.any(axis=-1)
    n = pixels.astype(np.float64) * (2.0 / SCALE) - 1.0
    n /= np.maximum(_length(n), 1e-12)[..., None]
    n[~foreground] = 0.0
    return n, foreground


def angle_deg(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    """Per-pixel angle in degrees between two fields of unit normals (H×W×3)."""
    cross = np.cross(a, b)
    # atan2 of |a×b| and a·b stays accurate for the tiny angles the verifier cares about (arccos does not).
    out: NDArray[Any] = np.degrees(np.arctan2(_length(cross), _dot(a, b)))
    return out
