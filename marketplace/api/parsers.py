"""Request body parsers that read at most a cap (DRF's JSON and form parsers read the whole body, however long).

A body over the cap, by its Content-Length or by what actually arrives, is refused with a 413 naming the cap; no
more than the cap (and one byte) is read into memory. DRF 3.16 and later hand these parsers request.body, which
Django itself caps at DATA_UPLOAD_MAX_MEMORY_SIZE (errors.py words that refusal the same way); earlier versions
read the stream whole. Multipart bodies are capped while they stream, by marketplace.core.uploads.
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from rest_framework import parsers

from marketplace.core.exceptions import ApplicationError


class BodyTooLarge(ApplicationError):
    status = 413


def body_cap() -> int:
    return int(settings.HASHWORK["JSON_MAX_BYTES"])


def read_capped(stream: Any, parser_context: dict[str, Any] | None, *, kind: str) -> bytes:
    """The body's bytes, at most body_cap(); BodyTooLarge names the cap when the body declares or brings more."""
    cap = body_cap()
    request = (parser_context or {}).get("request")
    meta = getattr(request, "META", {})
    try:
        declared = int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = BodyTooLarge(f"{kind} bodies are at most {cap} bytes; this one is larger.", {"max_bytes": cap})
    if declared > cap:
        raise too_large
    data: bytes = stream.read(cap + 1) if stream is not None else b""
    if len(data) > cap:
        raise too_large
    return data


class CappedJSONParser(parsers.JSONParser):
    """DRF's JSONParser on at most JSON_MAX_BYTES of body."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        data = read_capped(stream, parser_context, kind="JSON")
        return super().parse(io.BytesIO(data), media_type, parser_context)


class CappedFormParser(parsers.FormParser):
    """DRF's FormParser on at most JSON_MAX_BYTES of body."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        data = read_capped(stream, parser_context, kind="Form")
        return super().parse(io.BytesIO(data), media_type, parser_context)
