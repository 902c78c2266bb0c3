"""An assignment's input files, fetched into its workdir through a cache of files by sha256 (STATE/inputs): the
chunks of one render job share its assets, so a node downloads them once per job, not once per chunk, and a file
is checked against its sha256 every time it is used, never only when it was downloaded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path

from nodeagent.client import ApiError, MarketplaceClient
from nodeagent.retry import TransientError
from protocol import AssignmentMessage, InputFile

# Least recently used files go first past this many bytes (a job's assets are at most a few hundred MiB).
CACHE_MAX_BYTES = 2 * 2**30
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 20


def cache_dir(state: Path) -> Path:
    return state / "inputs"


def fetch(client: MarketplaceClient, message: AssignmentMessage, workdir: Path, cache: Path) -> str | None:
    """Put the assignment's input files in WORKDIR/inputs/ (from the cache, else downloaded into it), each one
    checked against its sha256 as it is copied; None when all are there, else why not."""
    inputs = workdir / "inputs"
    for item in message.input_urls:
        relative = Path(item.path)
        if relative.is_absolute() or ".." in relative.parts:
            return f"input path {item.path!r} leaves the working directory"
        target = inputs / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if _from_cache(cache, item.sha256, target):
            continue
        try:
            fetched = _download(client, item, cache)
        except (ApiError, TransientError) as exc:
            return f"cannot fetch input {item.path}: {exc}"
        if fetched is None or not _from_cache(cache, item.sha256, target):
            return f"input {item.path} does not match its sha256"
    return None


def _download(client: MarketplaceClient, item: InputFile, cache: Path) -> Path | None:
    """The file at item.url, stored in the cache under its sha256 once it matches it; None (nothing kept) if not."""
    if not _SHA256.fullmatch(item.sha256):
        return None  # not a sha256 this cache can name a file by; it cannot match one either
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{item.sha256}.{secrets.token_hex(4)}"
    try:
        client.download(item.url, partial)
        if file_sha256(partial) != item.sha256:
            return None
        final = cache / item.sha256
        # Atomic: two slots fetching the same file at once each rename a whole, checked copy.
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    _prune(cache)
    return final


def _from_cache(cache: Path, sha256: str, target: Path) -> bool:
    """Copy the cached file of `sha256` to `target`, hashing what is copied; a cached file that no longer matches
    (a disk fault, a process of this user writing into it) is removed and False returned, as for a miss."""
    if not _SHA256.fullmatch(sha256):
        return False
    source = cache / sha256
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, target.open("wb") as out:
            for block in iter(lambda: src.read(_BLOCK), b""):
                digest.update(block)
                out.write(block)
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        return False
    if digest.hexdigest() != sha256:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        return False
    with contextlib.suppress(OSError):
        os.utime(source)  # its use, for the least-recently-used pruning
    return True


def _prune(cache: Path) -> None:
    entries = []
    for path in cache.iterdir():
        with contextlib.suppress(OSError):
            if _SHA256.fullmatch(path.name):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= CACHE_MAX_BYTES:
            break
        path.unlink(missing_ok=True)
        total -= size


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in blocks: an artifact may be hundreds of MiB, never held whole in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
