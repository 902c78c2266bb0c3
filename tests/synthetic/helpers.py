"""Shared test material: a small spec and a hand-written GLB asset."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np


def small_spec(**overrides: Any) -> dict[str, Any]:
    """Every procedural kind plus a glTF asset, at 128² and few samples."""
    spec: dict[str, Any] = {
        "catalog": [
            {
                "kind": "carton",
                "category": "cereal",
                "size_m": {"width": [0.15, 0.25], "height": [0.2, 0.3], "depth": [0.05, 0.08]},
                "palette": ["#d62828", "#f7f7f7", "#003049"],
            },
            {
                "kind": "bottle",
                "category": "water",
                "size_m": {"width": [0.06, 0.09], "height": [0.2, 0.3]},
                "palette": ["#0077b6", "#ffffff"],
            },
            {
                "kind": "can",
                "category": "soda",
                "size_m": {"width": [0.06, 0.07], "height": [0.11, 0.13]},
                "palette": ["#e63946", "#ffffff"],
            },
            {
                "kind": "jar",
                "category": "jam",
                "size_m": {"width": [0.07, 0.09], "height": [0.09, 0.12]},
                "palette": ["#6a040f", "#ffba08"],
            },
            {
                "kind": "pouch",
                "category": "chips",
                "size_m": {"width": [0.12, 0.18], "height": [0.18, 0.25], "depth": [0.03, 0.05]},
                "palette": ["#ffb703", "#023047"],
            },
            {"kind": "asset", "category": "widget", "path": "widget.glb", "height_m": [0.15, 0.22], "weight": 3},
        ],
        "scene": {"shelf": {"rows": [2, 2], "width_m": 0.9}},
        "randomization": {"occluders": {"count": [1, 1]}},
        "output": {"resolution": [128, 128], "samples": 8},
        "seed": 11,
        "images": 50,
    }
    spec.update(overrides)
    return spec


def write_glb(path: Path) -> None:
    """A square pyramid as a binary glTF 2.0 file (positions + indices), written without Blender."""
    positions = np.array(
        [[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5], [0, 1.5, 0]], dtype=np.float32
    )  # glTF is y-up
    indices = np.array([0, 2, 1, 0, 3, 2, 0, 1, 4, 1, 2, 4, 2, 3, 4, 3, 0, 4], dtype=np.uint16)
    pos_bytes, idx_bytes = positions.tobytes(), indices.tobytes()
    pad = (4 - len(idx_bytes) % 4) % 4
    binary = pos_bytes + idx_bytes + b"\0" * pad
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "pyramid"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": len(positions),
                "type": "VEC3",
                "min": positions.min(axis=0).tolist(),
                "max": positions.max(axis=0).tolist(),
            },
            {"bufferView": 1, "componentType": 5123, "count": len(indices), "type": "SCALAR"},
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes)},
            {"buffer": 0, "byteOffset": len(pos_bytes), "byteLength": len(idx_bytes)},
        ],
        "buffers": [{"byteLength": len(binary)}],
    }
    text = json.dumps(gltf).encode()
    text += b" " * ((4 - len(text) % 4) % 4)
    body = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
