"""Upload size caps enforced while the body streams in, not after Django has written it all to disk.

Django's own limits bound form fields (DATA_UPLOAD_MAX_MEMORY_SIZE) and the number of parts, never a file's
bytes: a file part goes to a temporary file (or memory) whatever its size, and the view only sees it once it is
complete. `CappedUploadHandler` sits first in the request's upload handlers and counts every file byte before the
handlers behind it store it; past the cap it removes what they stored and refuses the request with a 413 that
names the cap. FILE_UPLOAD_HANDLERS installs it with the default cap (UPLOAD_DEFAULT_MAX_BYTES) on every request;
an upload endpoint (`UploadCapMixin`) replaces it with its own, worked out when the body is first read (the kind's
result cap, the asset cap), so that it may depend on who asks and for what.

Gunicorn (the web server of the local stack and the images) limits the request line and header fields
(`--limit-request-line`, `--limit-request-fields`, `--limit-request-field_size`) but has no body size limit: the
caps here are what bound a body, and a reverse proxy in front may add its own (nginx `client_max_body_size`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest

from marketplace.core.exceptions import ApplicationError

# Multipart framing (boundaries, part headers) on top of the fields and the files.
FRAMING_BYTES = 64 * 1024


@dataclass(frozen=True)
class UploadCap:
    """At most `max_bytes` of file content in one request; `what` names it in the refusal ("A render result")."""

    max_bytes: int
    what: str

    def message(self) -> str:
        return f"{self.what} is at most {self.max_bytes} bytes ({_human(self.max_bytes)}); this upload is larger."


class UploadTooLarge(ApplicationError, RequestDataTooBig):
    """The request's files exceed the endpoint's cap: 413, with the cap in `extra`. Outside the API (a plain
    Django view) it is a RequestDataTooBig, which Django answers with a 400."""

    status = 413

    def __init__(self, cap: UploadCap) -> None:
        super().__init__(cap.message(), {"max_bytes": cap.max_bytes})


def _human(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def default_cap() -> UploadCap:
    return UploadCap(settings.HASHWORK["UPLOAD_DEFAULT_MAX_BYTES"], "A file sent to this endpoint")


class CappedUploadHandler(FileUploadHandler):
    """Counts the file bytes of one request before the handlers behind it store them; over the cap, it throws away
    what they stored (the temporary file included) and raises UploadTooLarge. `cap` may be a callable, evaluated
    once when the body is first parsed (it may raise, say a 404 for someone else's object: nothing is read then)."""

    def __init__(self, request: HttpRequest | None = None, cap: UploadCap | Callable[[], UploadCap] | None = None):
        super().__init__(request)
        self._cap_source = cap if cap is not None else default_cap
        self._cap: UploadCap | None = None
        self.received = 0

    @property
    def cap(self) -> UploadCap:
        if self._cap is None:
            source = self._cap_source
            self._cap = source if isinstance(source, UploadCap) else source()
        return self._cap

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: bytes, encoding: str | None = None
    ) -> None:
        # A body that cannot fit is refused before a byte of it is read: the fields' own cap, framing, the files.
        fields = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0
        if content_length and content_length > self.cap.max_bytes + fields + FRAMING_BYTES:
            raise UploadTooLarge(self.cap)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.cap.max_bytes:
            self._discard_others()
            raise UploadTooLarge(self.cap)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the handlers behind this one make the file

    def _discard_others(self) -> None:
        """The handlers behind this one drop the file they were writing (TemporaryFileUploadHandler deletes its
        temporary file); files completed earlier in the request are closed, and so deleted, by Django's parser."""
        if self.request is None:
            return
        for handler in self.request.upload_handlers:
            if handler is self:
                continue
            handler.upload_interrupted()
            file = getattr(handler, "file", None)
            if file is not None:
                file.close()


def upload_cap_install(request: HttpRequest, cap: UploadCap | Callable[[], UploadCap]) -> None:
    """Cap the files of `request` at `cap` (replacing the default cap); before its body is read, or it raises."""
    others = [h for h in request.upload_handlers if not isinstance(h, CappedUploadHandler)]
    request.upload_handlers = [CappedUploadHandler(request, cap), *others]


class UploadCapMixin:
    """A DRF view whose uploads stream under `upload_cap(request, **url_kwargs)`; it is installed before the
    request is authenticated (session authentication's CSRF check reads the body), and evaluated when the body
    is first read: by then the caller is known (`request._request.user` is the session's or the token's user)."""

    def upload_cap(self, request: Any, **kwargs: Any) -> UploadCap:
        raise NotImplementedError

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        drf_request = super().initialize_request(request, *args, **kwargs)  # type: ignore[misc]
        upload_cap_install(request, lambda: self.upload_cap(drf_request, **kwargs))
        return drf_request
