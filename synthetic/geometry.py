"""Procedural product meshes (vertices, faces, per-corner UVs) as plain numpy, for Blender to instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

_SEGMENTS = 32


@dataclass(frozen=True)
class Mesh:
    """Vertices (N×3, metres, base at z=0), quad/triangle faces, and one UV per face corner."""

    vertices: NDArray[Any]
    faces: list[tuple[int, ...]]
    uvs: list[tuple[float, float]]


def _lathe(profile: list[tuple[float, float]], squash_y: float = 1.0, segments: int = _SEGMENTS) -> Mesh:
    """Revolve (radius, z) points around the z axis; the label texture wraps once around (u = angle)."""
    rings = len(profile)
    angles = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    verts = []
    for radius, z in profile:
        for a in angles:
            verts.append((radius * np.cos(a), radius * np.sin(a) * squash_y, z))
    z_min, z_max = profile[0][1], profile[-1][1]
    faces: list[tuple[int, ...]] = []
    uvs: list[tuple[float, float]] = []
    for r in range(rings - 1):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            faces.append((a, b, b + segments, a + segments))
            u0, u1 = s / segments, (s + 1) / segments
            v0 = (profile[r][1] - z_min) / (z_max - z_min)
            v1 = (profile[r + 1][1] - z_min) / (z_max - z_min)
            uvs.extend([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])
    bottom = len(verts)
    verts.append((0.0, 0.0, z_min))
    top = len(verts)
    verts.append((0.0, 0.0, z_max))
    last = (rings - 1) * segments
    for s in range(segments):
        faces.append((bottom, (s + 1) % segments, s))
        faces.append((top, last + s, last + (s + 1) % segments))
        uvs.extend([(0.0, 0.0)] * 6)
    return Mesh(np.array(verts, dtype=np.float64), faces, uvs)


def box_mesh(width: float, depth: float, height: float) -> Mesh:
    """A carton: a box whose front (−y) face carries the whole label, the other faces its edge colour."""
    x, y = width / 2, depth / 2
    verts = np.array(
        [
            (-x, -y, 0),
            (x, -y, 0),
            (x, y, 0),
            (-x, y, 0),
            (-x, -y, height),
            (x, -y, height),
            (x, y, height),
            (-x, y, height),
        ],
        dtype=np.float64,
    )
    faces: list[tuple[int, ...]] = [(0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7), (4, 5, 6, 7), (3, 2, 1, 0)]
    uvs = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    side = [(0.02, 0.02), (0.04, 0.02), (0.04, 0.04), (0.02, 0.04)]
    return Mesh(verts, faces, uvs + side * 5)


def product_mesh(kind: str, width: float, depth: float, height: float) -> Mesh:
    """The mesh of a procedural product kind fitting a (width, depth, height) slot."""
    r = width / 2
    if kind == "carton":
        return box_mesh(width, depth, height)
    if kind == "can":
        return _lathe([(r * 0.9, 0.0), (r, 0.01 * height), (r, 0.97 * height), (r * 0.88, height)])
    if kind == "bottle":
        neck = r * 0.38
        return _lathe(
            [
                (r * 0.92, 0.0),
                (r, 0.03 * height),
                (r, 0.6 * height),
                (r * 0.8, 0.72 * height),
                (neck, 0.84 * height),
                (neck, 0.95 * height),
                (neck * 1.15, 0.96 * height),
                (neck * 1.15, height),
            ]
        )
    if kind == "jar":
        return _lathe(
            [
                (r * 0.95, 0.0),
                (r, 0.05 * height),
                (r, 0.8 * height),
                (r * 0.9, 0.84 * height),
                (r * 0.93, 0.85 * height),
                (r * 0.93, height),
            ]
        )
    if kind == "pouch":
        return _lathe(
            [(r * 0.8, 0.0), (r, 0.1 * height), (r, 0.75 * height), (r * 0.92, 0.9 * height), (r * 0.85, height)],
            squash_y=min(1.0, max(0.15, depth / width)),
        )
    raise ValueError(f"unknown product kind {kind!r}")
