"""The 16-bit RGB PNG codec: exact round trips, every row filter decoded, Pillow agrees, bad files refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import chunk, png16


def _pixels(height: int = 21, width: int = 17) -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = np.stack(np.mgrid[0:height, 0:width], axis=-1).sum(axis=-1, keepdims=True) * np.array([300, 700, 1100])
    noisy = rng.integers(0, 65536, size=(height, width, 3))
    return np.where(np.arange(height)[:, None, None] % 3 == 0, noisy, smooth).astype(np.uint16)


def _png(width: int, height: int, rows: bytes) -> bytes:
    def part(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return png16.SIGNATURE + part(b"IHDR", ihdr) + part(b"IDAT", zlib.compress(rows)) + part(b"IEND", b"")


def _filtered(pixels: np.ndarray, kind: int) -> bytes:
    """Rows filtered as the PNG spec defines Average (3) and Paeth (4), byte by byte: an independent encoder."""
    raw = pixels.astype(">u2").view(np.uint8).reshape(pixels.shape[0], -1).astype(int)
    out = bytearray()
    for y, row in enumerate(raw):
        out.append(kind)
        above = raw[y - 1] if y else np.zeros_like(row)
        for i, value in enumerate(row):
            left = row[i - 6] if i >= 6 else 0
            corner = above[i - 6] if i >= 6 and y else 0
            if kind == 3:
                predictor = (left + above[i]) // 2
            else:
                p = left + above[i] - corner
                pa, pb, pc = abs(p - left), abs(p - above[i]), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else above[i] if pb <= pc else corner
            out.append((value - predictor) % 256)
    return bytes(out)


def test_a_round_trip_is_exact_and_uses_several_row_filters() -> None:
    pixels = _pixels()
    data = png16.encode(pixels)
    assert np.array_equal(png16.decode(data), pixels)
    (length,) = struct.unpack_from(">I", data, 33)  # the IDAT chunk, right after the signature and IHDR
    rows = np.frombuffer(zlib.decompress(data[41 : 41 + length]), dtype=np.uint8).reshape(pixels.shape[0], -1)
    assert len(set(rows[:, 0].tolist())) >= 2


def test_average_and_paeth_filtered_rows_decode_too() -> None:
    pixels = _pixels(6, 5)
    for kind in (3, 4):
        assert np.array_equal(png16.decode(_png(5, 6, _filtered(pixels, kind))), pixels), kind


def test_pillow_reads_the_same_image_at_8_bits(tmp_path: Path) -> None:
    pixels = _pixels()
    chunk.write_png(tmp_path / "n.png", pixels)
    with Image.open(tmp_path / "n.png") as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), (pixels >> 8).astype(np.uint8))
    assert np.array_equal(chunk.read_png(tmp_path / "n.png"), pixels)


def test_broken_or_foreign_files_are_refused(tmp_path: Path) -> None:
    data = png16.encode(_pixels())
    corrupt = bytearray(data)
    corrupt[50] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        png16.decode(bytes(corrupt))
    with pytest.raises(ValueError, match="IEND"):
        png16.decode(data[:-12])
    Image.fromarray((_pixels() >> 8).astype(np.uint8)).save(tmp_path / "8.png")
    with pytest.raises(ValueError, match="not a non-interlaced 16-bit RGB PNG"):
        png16.decode((tmp_path / "8.png").read_bytes())
    bomb = _png(2, 2, bytes(10_000))
    with pytest.raises(ValueError, match="expected 26"):
        png16.decode(bomb)
