"""A bounds-checked reader of binary payloads (the update wire format of training.compress)."""

from __future__ import annotations

import struct
from typing import Any


class Reader:
    """Reads a payload front to back; every read that would run past its end is a ValueError naming what."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise ValueError(f"truncated payload: {what} needs {n} bytes at offset {self.pos}, {self.remaining} left")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def peek(self, fmt: str, what: str) -> tuple[Any, ...]:
        start = self.pos
        try:
            return self.unpack(fmt, what)
        finally:
            self.pos = start

    @property
    def remaining(self) -> int:
        return len(self.view) - self.pos
