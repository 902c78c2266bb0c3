"""A rendered chunk read in place from its zip, without unpacking it: the Path operations the verifier uses."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO

# What a broken or hostile zip raises inside zipfile besides BadZipFile (RuntimeError: an encrypted member).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    UnicodeDecodeError,
)

Opener = Callable[[], IO[bytes]]


class ZipRoot:
    """A folder inside a zip, addressed like a pathlib.Path (`root / "rgb" / "00000001.png"`), with the few methods
    synthetic's readers call: `open("rb")`, `read_bytes`, `read_text`, `is_file`, `exists`, `name`.

    The archive is opened afresh from `opener` (a new binary handle on it each call) for every member read, so that
    a merge of thousands of chunks holds no file open between reads. A member is read whole (zipfile never inflates
    one past the size its central directory declares; the caller bounds those sizes first, as the render kind's
    `zip_limits` do); a zip that fails while read is a ValueError, like any unreadable chunk file."""

    def __init__(self, opener: Opener, names: frozenset[str], *, label: str = "chunk", at: str = "") -> None:
        self._opener = opener
        self._names = names
        # The root's name (as an unpacked folder's would be: the marketplace names it by the result's id).
        self._label = label
        self._at = at

    @classmethod
    def of(cls, opener: Opener, *, label: str = "chunk") -> ZipRoot:
        """The root of the archive `opener` opens; ValueError if it is not a zip."""
        try:
            with opener() as handle, zipfile.ZipFile(handle) as archive:
                names = frozenset(i.filename for i in archive.infolist() if not i.is_dir())
        except ZIP_ERRORS as exc:
            raise ValueError(f"not a readable zip ({type(exc).__name__}: {exc})") from None
        return cls(opener, names, label=label)

    def __truediv__(self, part: str) -> ZipRoot:
        at = f"{self._at}/{part}" if self._at else str(part)
        return ZipRoot(self._opener, self._names, label=self._label, at=at)

    def __str__(self) -> str:
        return f"{self._label}.zip:{self._at or '/'}"

    def __repr__(self) -> str:
        return f"ZipRoot({str(self)!r})"

    @property
    def name(self) -> str:
        return self._at.rsplit("/", 1)[-1] if self._at else self._label

    def is_file(self) -> bool:
        return self._at in self._names

    def exists(self) -> bool:
        return self.is_file() or any(n.startswith(f"{self._at}/") for n in self._names)

    def read_bytes(self) -> bytes:
        if not self.is_file():
            raise FileNotFoundError(f"no {self._at} in the chunk's zip")
        try:
            with self._opener() as handle, zipfile.ZipFile(handle) as archive:
                return archive.read(self._at)
        except ZIP_ERRORS as exc:
            raise ValueError(f"{self._at}: unreadable in the zip ({type(exc).__name__}: {exc})") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        try:
            return self.read_bytes().decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self._at} is not {encoding} text ({exc})") from None

    def open(self, mode: str = "rb") -> IO[bytes]:
        if mode != "rb":
            raise ValueError(f"a chunk's zip is read only (mode {mode!r})")
        return io.BytesIO(self.read_bytes())
