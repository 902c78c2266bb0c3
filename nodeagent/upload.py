"""A multipart/form-data request body that reads its file while it is sent: an artifact is never whole in memory."""

from __future__ import annotations

import io
import secrets
from pathlib import Path
from typing import IO


class MultipartFile:
    """Form fields and one file as a multipart/form-data body, read in blocks by the HTTP library as it sends.

    It has a length (requests then sends Content-Length, not chunked encoding, which WSGI servers may not pass on)
    and is read once: make a new one for each try. requests' own `files=` builds the whole body in memory."""

    def __init__(self, fields: dict[str, str], *, field: str, path: Path) -> None:
        # 32 random hex digits: no field value (hex digests, a signature, metrics JSON) or file can be read as it.
        boundary = secrets.token_hex(16)
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        handle = path.open("rb")
        self._length = len(head) + path.stat().st_size + len(tail)
        self._parts: list[IO[bytes]] = [io.BytesIO(head), handle, io.BytesIO(tail)]

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._parts and (size < 0 or len(out) < size):
            block = self._parts[0].read(-1 if size < 0 else size - len(out))
            if block:
                out += block
            else:
                self._parts.pop(0).close()
        return bytes(out)

    def __iter__(self) -> MultipartFile:
        return self

    def __next__(self) -> bytes:
        block = self.read(1 << 16)
        if not block:
            raise StopIteration
        return block

    def close(self) -> None:
        for part in self._parts:
            part.close()
        self._parts = []
