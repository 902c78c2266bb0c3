"""A train job's files in the media storage (which may be S3): put and get by name, local copies for torch, the
global weights cached by sha256, and signed URLs that node agents download inputs with."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from marketplace.core.exceptions import NotFound
from marketplace.federated.models import TrainRound
from marketplace.jobs.models import ASSIGNMENT_OPEN, Assignment

FILE_SALT = "hashwork.federated.file"
# A signed input URL is good while its assignment is open, and never longer than this.
FILE_URL_MAX_AGE = 24 * 3600


def put(name: str, data: bytes) -> dict[str, Any]:
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(data))
    return {"name": saved, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def exists(name: str) -> bool:
    return bool(default_storage.exists(name))


def get(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        data: bytes = handle.read()
    return data


@contextmanager
def local(name: str, suffix: str) -> Iterator[Path]:
    """A stored file as a local path (the storage may be S3), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hw-train-") as tmp:
        path = Path(tmp) / f"file{suffix}"
        with default_storage.open(name, "rb") as source, path.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        yield path


def file_url(*, name: str, assignment_id: UUID) -> str:
    token = signing.dumps({"n": name, "a": str(assignment_id)}, salt=FILE_SALT, compress=True)
    return f"/api/files/{token}/"


def file_open(*, token: str) -> Any:
    """The stored file a signed URL names, while its assignment is open; NotFound otherwise (no detail leaked)."""
    try:
        claim = signing.loads(token, salt=FILE_SALT, max_age=FILE_URL_MAX_AGE)
        name, assignment_id = str(claim["n"]), UUID(claim["a"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise NotFound("No such file (the link is invalid or has expired).") from None
    if not Assignment.objects.filter(id=assignment_id, state__in=ASSIGNMENT_OPEN).exists():
        raise NotFound("No such file (its assignment is no longer open).")
    return default_storage.open(name, "rb")


_WEIGHTS_CACHE: dict[str, dict[str, Any]] = {}


def weights(rnd: TrainRound) -> dict[str, Any]:
    """A round's global weights (cached by sha256: they never change)."""
    from training.weights import state_from_bytes

    if rnd.weights_sha256 not in _WEIGHTS_CACHE:
        if len(_WEIGHTS_CACHE) > 8:
            _WEIGHTS_CACHE.clear()
        _WEIGHTS_CACHE[rnd.weights_sha256] = state_from_bytes(get(rnd.weights_name))
    return _WEIGHTS_CACHE[rnd.weights_sha256]
