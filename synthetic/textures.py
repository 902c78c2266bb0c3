"""Procedural label textures (bands, blocks, glyph rows, patterns) generated with numpy."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

TEXTURE_SIZE = (128, 256)  # (height, width): labels wrap around round products, so twice as wide as tall


def _glyph_rows(img: NDArray[Any], rng: np.random.Generator, colour: NDArray[Any], top: int, bottom: int) -> None:
    """Rows of small rectangles that read as text from a distance."""
    _h, w = img.shape[:2]
    y = top
    while y < bottom - 4:
        glyph_h = int(rng.integers(4, 10))
        x = int(rng.integers(4, 20))
        end = int(rng.integers(w // 2, w - 4))
        while x < end:
            word = int(rng.integers(2, 7))
            for _ in range(word):
                gw = int(rng.integers(2, 5))
                if x + gw >= end:
                    break
                img[y : min(y + glyph_h, bottom), x : x + gw] = colour
                x += gw + 1
            x += int(rng.integers(3, 7))
        y += glyph_h + int(rng.integers(3, 7))


def label_texture(style: str, colours: Sequence[Sequence[float]], seed: int) -> NDArray[Any]:
    """An RGBA float32 texture (H×W×4, rows top to bottom) for a label style and palette (linear RGB)."""
    rng = np.random.default_rng(seed)
    h, w = TEXTURE_SIZE
    palette = [np.asarray(c, dtype=np.float32) for c in colours] or [np.array([0.5, 0.5, 0.5], dtype=np.float32)]

    def pick(k: int) -> NDArray[Any]:
        return palette[k % len(palette)]

    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = pick(0)
    if style == "bands":
        edges = np.sort(rng.integers(0, h, size=int(rng.integers(2, 6))))
        for k, (a, b) in enumerate(itertools.pairwise(edges)):
            img[a:b] = pick(k + 1)
        _glyph_rows(img, rng, pick(2), h // 3, 2 * h // 3)
    elif style == "blocks":
        for k in range(int(rng.integers(2, 6))):
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            img[y0 : y0 + int(rng.integers(8, h // 2)), x0 : x0 + int(rng.integers(8, w // 2))] = pick(k + 1)
        _glyph_rows(img, rng, pick(3), 2 * h // 3, h)
    elif style == "glyphs":
        img[: h // 4] = pick(1)
        _glyph_rows(img, rng, pick(2), h // 4 + 4, h - 4)
    elif style == "pattern":
        period = int(rng.integers(6, 24))
        yy, xx = np.mgrid[0:h, 0:w]
        if rng.random() < 0.5:
            mask = ((xx + yy) // period) % 2 == 0
        else:
            mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 3) ** 2
        img[mask] = pick(1)
        img[h // 3 : 2 * h // 3, w // 8 : 7 * w // 8] = pick(2)
        _glyph_rows(img, rng, pick(0), h // 3 + 4, 2 * h // 3 - 4)
    elif style != "asset":
        raise ValueError(f"unknown label style {style!r}")
    alpha = np.ones((h, w, 1), dtype=np.float32)
    return np.concatenate([img, alpha], axis=2)
