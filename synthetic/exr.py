"""A minimal reader for the uncompressed scanline OpenEXR files the label pass writes (no OpenEXR dependency)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

_MAGIC = 20000630
_SINGLE_TILED, _DEEP, _MULTI_PART = 0x200, 0x800, 0x1000
_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _header(data: bytes, pos: int) -> tuple[dict[str, bytes], int]:
    header: dict[str, bytes] = {}
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack_from("<i", data, type_end + 1)
        header[data[pos:name_end].decode()] = data[type_end + 5 : type_end + 5 + size]
        pos = type_end + 5 + size
    return header, pos + 1


def _channels(chlist: bytes) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    while chlist[pos] != 0:
        end = chlist.index(b"\0", pos)
        pixel_type, _, _, x_sampling, y_sampling = struct.unpack_from("<iB3sii", chlist, end + 1)
        if (x_sampling, y_sampling) != (1, 1):
            raise ValueError("subsampled EXR channels are not supported")
        out.append((chlist[pos:end].decode(), pixel_type))
        pos = end + 1 + 16
    return out


def read_exr(path: Path) -> dict[str, NDArray[Any]]:
    """Channels of an uncompressed scanline EXR (single- or multi-part) as float32 arrays, row 0 at the top."""
    data = path.read_bytes()
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    if version & (_SINGLE_TILED | _DEEP):
        raise ValueError(f"{path}: tiled or deep EXR is not supported")
    multi = bool(version & _MULTI_PART)
    pos = 8
    headers: list[dict[str, bytes]] = []
    while True:
        header, pos = _header(data, pos)
        headers.append(header)
        if not multi or data[pos] == 0:
            break
    if multi:
        pos += 1
    parts = []
    for header in headers:
        if header["compression"][0] != 0:
            raise ValueError(f"{path}: compressed EXR is not supported (write it with exr_codec='NONE')")
        if header.get("type", b"scanlineimage\0").rstrip(b"\0") != b"scanlineimage":
            raise ValueError(f"{path}: only scanline parts are supported")
        xmin, ymin, xmax, ymax = struct.unpack("<iiii", header["dataWindow"])
        height = ymax - ymin + 1
        parts.append((_channels(header["channels"]), xmax - xmin + 1, ymin, height))
        pos += 8 * height
    out: dict[str, NDArray[Any]] = {}
    for channels, width, _, height in parts:
        for name, _ in channels:
            out[name] = np.empty((height, width), dtype=np.float32)
    table = 8 * sum(height for *_, height in parts)
    p = pos - table
    offsets = np.frombuffer(data, dtype="<u8", count=table // 8, offset=p)
    for offset in offsets:
        q = int(offset)
        part = 0
        if multi:
            (part,) = struct.unpack_from("<i", data, q)
            q += 4
        y, _size = struct.unpack_from("<ii", data, q)
        q += 8
        channels, width, ymin, _ = parts[part]
        for name, pixel_type in channels:
            dtype = _DTYPES[pixel_type]
            out[name][y - ymin] = np.frombuffer(data, dtype=dtype, count=width, offset=q)
            q += width * dtype.itemsize
    return out
