"""16-bit RGB PNG with numpy and zlib: Pillow reads and writes 16 bits per sample only for single-channel images."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BYTES_PER_PIXEL = 6  # three big-endian 16-bit samples
# The most pixels decoded without an expected shape: the spec's largest resolution, 8192².
MAX_PIXELS = 8192 * 8192


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def is_rgb16(header: bytes) -> bool:
    """Whether the first 26 bytes of a file are the start of a non-interlaced 16-bit RGB PNG."""
    return len(header) >= 26 and header[:8] == SIGNATURE and header[12:16] == b"IHDR" and header[24:26] == b"\x10\x02"


def encode(pixels: NDArray[Any]) -> bytes:
    """A PNG of uint16 H×W×3 pixels; each row filtered with None, Sub or Up, whichever leaves the smallest bytes.

    Only these three filters, because they decode with whole-row numpy operations (Average and Paeth do not).
    """
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint16 H×W×3 pixels, got {pixels.dtype} {pixels.shape}")
    height, width, _ = pixels.shape
    raw = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(height, width * _BYTES_PER_PIXEL)
    sub = raw.copy()
    sub[:, _BYTES_PER_PIXEL:] = raw[:, _BYTES_PER_PIXEL:] - raw[:, :-_BYTES_PER_PIXEL]
    up = raw.copy()
    up[1:] = raw[1:] - raw[:-1]
    candidates = np.stack([raw, sub, up])
    # The usual heuristic (libpng's): the filter whose output, read as signed bytes, has the smallest magnitude.
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    choice = cost.argmin(axis=0)
    rows = candidates[choice, np.arange(height)]
    data = np.concatenate([choice.astype(np.uint8)[:, None], rows], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(data.tobytes(), 6)) + _chunk(b"IEND", b"")
    )


def _unfilter_slow(row_filter: int, line: bytes, prev: bytes) -> bytes:
    """Average (3) and Paeth (4): each byte depends on the one decoded just before it."""
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - _BYTES_PER_PIXEL] if i >= _BYTES_PER_PIXEL else 0
        above = prev[i]
        if row_filter == 3:
            out[i] = (out[i] + (left + above) // 2) & 0xFF
            continue
        corner = prev[i - _BYTES_PER_PIXEL] if i >= _BYTES_PER_PIXEL else 0
        estimate = left + above - corner
        pa, pb, pc = abs(estimate - left), abs(estimate - above), abs(estimate - corner)
        predictor = left if pa <= pb and pa <= pc else above if pb <= pc else corner
        out[i] = (out[i] + predictor) & 0xFF
    return bytes(out)


def decode(data: bytes, *, shape: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> NDArray[Any]:
    """uint16 H×W×3 pixels of a non-interlaced 16-bit RGB PNG (any filter); ValueError for anything else.

    The header's width and height are untrusted: with `shape` ((height, width), the size the caller expects) they
    must equal it, and without, stay within `max_pixels`; both are checked before any image data is inflated.
    """
    if data[:8] != SIGNATURE:
        raise ValueError("not a PNG file")
    pos = 8
    header: tuple[int, ...] | None = None
    idat = bytearray()
    while True:
        if pos + 8 > len(data):
            raise ValueError("PNG ends before its IEND chunk")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise ValueError(f"PNG chunk {kind!r} is truncated")
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"PNG chunk {kind!r} fails its CRC")
        pos += 12 + length
        if kind == b"IHDR":
            if header is not None or length != 13:
                raise ValueError("PNG has a malformed or second IHDR chunk")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG has no IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = header
    if (depth, colour, compression, filtering, interlace) != (16, 2, 0, 0, 0):
        raise ValueError(f"not a non-interlaced 16-bit RGB PNG (bit depth {depth}, colour type {colour})")
    if shape is not None and (height, width) != tuple(shape):
        raise ValueError(f"PNG is {width}×{height}, expected {shape[1]}×{shape[0]}")
    if width * height > max_pixels:
        raise ValueError(f"PNG declares {width}×{height} pixels, more than {max_pixels}")
    stride = width * _BYTES_PER_PIXEL
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    # Bounded: a hostile file cannot inflate past the size its header promises.
    try:
        raw = inflater.decompress(bytes(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"PNG image data does not inflate ({exc})") from None
    if len(raw) != expected:
        raise ValueError(f"PNG image data is {len(raw)} bytes, expected {expected}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.empty((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        row_filter, line = int(rows[y, 0]), rows[y, 1:]
        if row_filter == 0:
            out[y] = line
        elif row_filter == 1:
            out[y] = np.cumsum(line.reshape(width, _BYTES_PER_PIXEL), axis=0, dtype=np.uint8).reshape(stride)
        elif row_filter == 2:
            out[y] = line + prev
        elif row_filter in (3, 4):
            out[y] = np.frombuffer(_unfilter_slow(row_filter, line.tobytes(), prev.tobytes()), dtype=np.uint8)
        else:
            raise ValueError(f"PNG row {y} has unknown filter type {row_filter}")
        prev = out[y]
    return out.view(">u2").reshape(height, width, 3).astype(np.uint16)
