"""A real node worker process (`python -m nodeagent.worker`) on an enrolled node's real broker credentials, and a
small HTTP marketplace that records the assignments the worker tries to start (and refuses them, 409)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from marketplace.core.localstack import ROOT
from marketplace.core.processes import die_with_parent
from marketplace.nodes import broker
from marketplace.nodes.services import Enrolment
from nodeagent import broker as agent_broker
from nodeagent import config as agent_config
from protocol import BrokerHealth
from tests.helpers import wait_for


class Marketplace(ThreadingHTTPServer):
    """Answers every POST 409 (the assignment is not the node's to start) and records its path."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def started(self, assignment_id: str) -> bool:
        return f"/api/assignments/{assignment_id}/start/" in self.paths


class _Handler(BaseHTTPRequestHandler):
    server: Marketplace

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        reply = json.dumps({"message": "not yours to start (test)"}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def marketplace() -> Iterator[Marketplace]:
    server = Marketplace()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class NodeWorker:
    """The node's Celery worker as `nodeagent run` starts it, on the enrolment's broker URL and prefix."""

    def __init__(self, tmp_path: Path, enrolment: Enrolment, marketplace_url: str) -> None:
        node = enrolment.node
        assert enrolment.broker_url is not None
        assert enrolment.broker_prefix is not None
        self.config = agent_config.AgentConfig(
            marketplace_url=marketplace_url,
            node_id=str(node.id),
            node_name=node.name,
            token="hwn_test",
            broker_url=enrolment.broker_url,
            broker_prefix=enrolment.broker_prefix,
            queue=broker.node_queue(node.id),
            wallet_key="0x" + "11" * 32,
            wallet_address="0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
            state_dir=str(tmp_path / f"state-{node.name}"),
        )
        self.path = tmp_path / f"{node.name}.json"
        agent_config.save(self.config, self.path)
        self.log = tmp_path / f"worker-{node.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeWorker:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodeagent.worker", str(self.path), "1"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        return self

    def health(self) -> BrokerHealth:
        return agent_broker.broker_health(self.config)

    def wait_health(self, ok: bool, *, contains: str = "", timeout: float = 30) -> BrokerHealth:
        def reached() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"the worker died:\n{self.tail()}"
            now = self.health()
            return now.ok is ok and contains in now.error

        try:
            wait_for(reached, timeout=timeout, what=f"the worker's broker health to be ok={ok} {contains!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it is {self.health()}; the worker's log:\n{self.tail()}") from None
        return self.health()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGQUIT: Celery's cold shutdown, as the agent stops it.
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
