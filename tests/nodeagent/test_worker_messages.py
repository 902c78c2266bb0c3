"""The worker reads each message with the protocol: one it cannot read is reported failed to the marketplace with
the reason (for another protocol version: how to upgrade), never raised into Celery. The marketplace here is a
small HTTP server that records what the agent sends."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nodeagent import worker
from nodeagent.client import MarketplaceClient
from protocol import Heartbeat, Progress
from tests.nodeagent.test_agent_cli import _config
from tests.protocol.messages import an_assignment


class _Marketplace(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, Any]] = []
        self.replies: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Marketplace

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            recorded: Any = json.loads(body) if body else None
        except ValueError:
            recorded = body  # a result upload (multipart): kept as it came
        self.server.calls.append((self.path, recorded))
        reply = json.dumps(self.server.replies.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        reply = json.dumps(self.server.replies.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

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


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marketplace: _Marketplace) -> Path:
    cfg = _config(tmp_path, marketplace_url=marketplace.url)
    (cfg.state / "work").mkdir(parents=True)
    worker.running_dir(cfg).mkdir()
    monkeypatch.setattr(worker, "_config", cfg)
    return cfg.state


def test_a_message_of_another_protocol_version_is_reported_failed_with_the_upgrade_text(
    state: Path, marketplace: _Marketplace, caplog: pytest.LogCaptureFixture
) -> None:
    message = {**an_assignment().to_json(), "protocol": "hashwork-protocol/2"}
    with caplog.at_level(logging.ERROR, logger="nodeagent.worker"):
        assert worker.run_assignment(message) == "incompatible"
    [(path, body)] = marketplace.calls
    assert path == f"/api/assignments/{message['assignment_id']}/fail/"
    assert "'hashwork-protocol/2'" in body["reason"]
    assert "Upgrade the node agent" in body["reason"]
    assert "git pull && make install" in body["reason"]
    assert f"assignment {message['assignment_id']} refused" in caplog.text
    assert "Upgrade the node agent" in caplog.text
    assert not list((state / "work").iterdir())


def test_a_message_missing_a_field_is_reported_failed_naming_the_field(marketplace: _Marketplace, state: Path) -> None:
    message = an_assignment().to_json()
    del message["time_limit_seconds"]
    assert worker.run_assignment(message) == "incompatible"
    [(path, body)] = marketplace.calls
    assert path.endswith("/fail/")
    assert body["reason"] == "assignment message: missing field 'time_limit_seconds'"


def test_a_message_without_an_assignment_id_is_logged_and_dropped(
    marketplace: _Marketplace, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="nodeagent.worker"):
        assert worker.run_assignment({"protocol": "hashwork-protocol/0"}) == "incompatible"
    assert marketplace.calls == []
    assert "without an assignment id was dropped" in caplog.text


def test_a_message_it_can_read_goes_on_as_before_here_handed_back_while_paused(
    marketplace: _Marketplace, state: Path
) -> None:
    (state / "paused").touch()
    message = an_assignment()
    assert worker.run_assignment(message.to_json()) == "released"
    assert marketplace.calls == [(f"/api/assignments/{message.assignment_id}/release/", None)]


def test_the_client_sends_a_typed_heartbeat_and_reads_a_typed_reply(marketplace: _Marketplace) -> None:
    marketplace.replies["/api/nodes/heartbeat/"] = {"node": {"id": "n1"}, "revoked": ["a1"], "withdraw": True}
    beat = Heartbeat(free_slots=2, running=["a1"], progress={"a1": Progress(done=1, total=3)})
    reply = MarketplaceClient(marketplace.url, token="hwn_x").heartbeat(beat)
    assert marketplace.calls == [("/api/nodes/heartbeat/", beat.to_json())]
    assert reply.revoked == ["a1"]
    assert reply.withdraw is True


def test_status_names_the_sandbox_the_worker_runs_assignments_in(
    tmp_path: Path, marketplace: _Marketplace, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodeagent import cli, sandbox
    from nodeagent import config as agent_config

    marketplace.replies.update({
        "/api/nodes/me/": {"name": "rig", "id": "n1", "is_online": True, "valid_count": 1, "invalid_count": 0,
                           "expired_count": 0},
        "/api/nodes/me/assignments/?limit=10": {"results": []},
        "/api/nodes/me/earnings/": {"credit": None, "settled": "0", "pending": "0"},
    })  # fmt: skip
    cfg = _config(tmp_path, marketplace_url=marketplace.url)
    path = tmp_path / "agent.json"
    agent_config.save(cfg, path)
    cfg.state.mkdir(parents=True)
    assert cli.main(["--config", str(path), "status"]) == 0
    assert "  sandbox: not known yet (the agent has not run here; configured: auto)\n" in capsys.readouterr().out
    sandbox.state_write(cfg.state, sandbox.Sandbox("docker", "hashwork/nodeagent:local"))
    assert cli.main(["--config", str(path), "status"]) == 0
    assert "  sandbox: docker (hashwork/nodeagent:local)\n" in capsys.readouterr().out
    sandbox.state_write(cfg.state, sandbox.Sandbox("none", reason="no Docker engine answers"))
    assert cli.main(["--config", str(path), "status"]) == 0
    assert "  sandbox: none (forked child, unsandboxed: no Docker engine answers)\n" in capsys.readouterr().out
