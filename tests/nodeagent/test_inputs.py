"""The agent's inputs and uploads: a job's input files are downloaded once and reused from a cache by sha256 for its
next assignments (checked every time they are used: a file that fails its sha256 is refused, never run on), and a
result is uploaded streamed from its file, never whole in memory. The marketplace here is a small HTTP server."""

from __future__ import annotations

import hashlib
import threading
import tracemalloc
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nodeagent import inputs, worker
from nodeagent.client import MarketplaceClient
from nodeagent.upload import MultipartFile
from protocol import InputFile
from tests.nodeagent.test_agent_cli import _config
from tests.protocol.messages import an_assignment

MODEL = b"glTF" + bytes(range(256)) * 64
MODEL_URL = "/api/assignments/x/inputs/widget/"


class _Marketplace(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {MODEL_URL: MODEL}
        self.gets: list[str] = []
        self.posts: list[tuple[str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Marketplace

    def do_GET(self) -> None:
        self.server.gets.append(self.path)
        body = self.server.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append((self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def marketplace() -> Iterator[_Marketplace]:
    server = _Marketplace()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _message(data: bytes = MODEL, url: str = MODEL_URL, path: str = "models/widget.glb") -> Any:
    return an_assignment(input_urls=[InputFile(path=path, url=url, sha256=hashlib.sha256(data).hexdigest())])


def _fetch(marketplace: _Marketplace, tmp_path: Path, message: Any, name: str) -> tuple[str | None, Path]:
    workdir = tmp_path / name
    workdir.mkdir()
    client = MarketplaceClient(marketplace.url, token="hwn_x")
    return inputs.fetch(client, message, workdir, tmp_path / "cache"), workdir


def test_the_next_assignment_of_a_job_takes_its_inputs_from_the_cache_not_the_network(
    marketplace: _Marketplace, tmp_path: Path
) -> None:
    for name in ("first", "second", "third"):
        outcome, workdir = _fetch(marketplace, tmp_path, _message(), name)
        assert outcome is None
        assert (workdir / "inputs" / "models" / "widget.glb").read_bytes() == MODEL
    assert marketplace.gets == [MODEL_URL]


def test_a_download_that_fails_its_sha256_is_refused_and_not_kept(marketplace: _Marketplace, tmp_path: Path) -> None:
    marketplace.files[MODEL_URL] = MODEL[:-1] + b"!"
    outcome, workdir = _fetch(marketplace, tmp_path, _message(), "w")
    assert outcome == "input models/widget.glb does not match its sha256"
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (workdir / "inputs" / "models" / "widget.glb").exists()


def test_a_cached_input_that_no_longer_matches_its_sha256_is_never_used_and_is_fetched_again(
    marketplace: _Marketplace, tmp_path: Path
) -> None:
    assert _fetch(marketplace, tmp_path, _message(), "first")[0] is None
    [cached] = list((tmp_path / "cache").iterdir())
    cached.write_bytes(b"tampered with")
    outcome, workdir = _fetch(marketplace, tmp_path, _message(), "second")
    assert outcome is None
    assert (workdir / "inputs" / "models" / "widget.glb").read_bytes() == MODEL
    assert marketplace.gets == [MODEL_URL, MODEL_URL]
    assert cached.read_bytes() == MODEL


def test_an_input_path_that_leaves_the_working_directory_is_refused(marketplace: _Marketplace, tmp_path: Path) -> None:
    outcome, _ = _fetch(marketplace, tmp_path, _message(path="../escape.glb"), "w")
    assert outcome == "input path '../escape.glb' leaves the working directory"
    assert marketplace.gets == []


def test_the_worker_downloads_a_jobs_input_once_for_two_assignments_and_uploads_each_result(
    marketplace: _Marketplace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, marketplace_url=marketplace.url)
    (cfg.state / "work").mkdir(parents=True)
    worker.running_dir(cfg).mkdir()
    monkeypatch.setattr(worker, "_config", cfg)
    first = _message().model_copy(update={"assignment_id": "8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b11"})
    second = _message().model_copy(update={"assignment_id": "8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b12"})
    assert worker.run_assignment(first.to_json()) == "submitted"
    assert worker.run_assignment(second.to_json()) == "submitted"
    assert marketplace.gets == [MODEL_URL]
    uploads = [(path, headers, body) for path, headers, body in marketplace.posts if path.endswith("/result/")]
    assert [path for path, _, _ in uploads] == [f"/api/assignments/{m.assignment_id}/result/" for m in (first, second)]
    for _, headers, body in uploads:
        assert "Transfer-Encoding" not in headers
        assert int(headers["Content-Length"]) == len(body)
        form = _form(headers["Content-Type"], body)
        assert hashlib.sha256(form["artifact"]).hexdigest() == form["sha256"].decode()
        assert form["signature"].startswith(b"0x")


def _form(content_type: str, body: bytes) -> dict[str, bytes]:
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.iter_parts()  # type: ignore[attr-defined]
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in parts}


def test_an_upload_body_is_the_multipart_form_read_in_blocks_never_the_whole_file(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    with artifact.open("wb") as handle:
        handle.truncate(64 << 20)  # 64 MiB of zeros, sparse on disk
    body = MultipartFile({"sha256": "ab" * 32, "metrics": '{"a": "é"}'}, field="artifact", path=artifact)
    tracemalloc.start()
    try:
        size = 0
        for block in body:
            assert len(block) <= 1 << 16
            size += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == len(body)
    assert peak < 4 << 20, peak
    small = tmp_path / "small"
    small.write_bytes(b"\x00\r\n--x\r\n" * 3)
    whole = MultipartFile({"sha256": "cd" * 32, "metrics": '{"a": "é"}'}, field="artifact", path=small)
    form = _form(whole.content_type, whole.read())
    assert form == {"sha256": b"cd" * 32, "metrics": '{"a": "é"}'.encode(), "artifact": small.read_bytes()}
