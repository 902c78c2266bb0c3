"""One whole Hashwork on this machine, started the same way by `manage.py demo` and the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import DEFAULT_FEE_BPS, Deployment, deploy, load_deployment
from contracts.errors import ChainError, DevChainError
from contracts.sender import Sender
from marketplace.core import embedded_redis
from marketplace.core.processes import Supervisor
from marketplace.core.queues import MARKETPLACE_QUEUES, REPLAY_QUEUES, Queue

ROOT = Path(__file__).resolve().parents[2]


class LocalStackError(RuntimeError):
    """A part of the local stack failed to start, answer or enrol in time; the message says what and where."""


def wait_until(
    supervisor: Supervisor, condition: Callable[[], bool], *, timeout: float, failure: str, interval: float = 0.2
) -> None:
    """Poll `condition` until it holds; LocalStackError(`failure`) after `timeout` s, ChildDied as soon as a
    supervised process dies (no point waiting on a worker that is gone)."""
    deadline = time.monotonic() + timeout
    while not condition():
        supervisor.check()
        if time.monotonic() > deadline:
            raise LocalStackError(failure)
        time.sleep(interval)


@dataclass
class Stopped:
    """What `LocalStack.stop` stopped: each process with its exit code (newest first), the chain, the Redis."""

    processes: list[tuple[str, int | None]] = field(default_factory=list)
    chain: bool = False
    redis: bool = False


class LocalStack:
    """The processes of one local install: an embedded Redis, Anvil with the contracts, the web server, the
    marketplace, replay and settlement workers, beat and node agents, supervised with their logs in `var_dir`/logs/.

    `env` is what every child gets on top of this process's environment; it stays one dict, so a caller may change
    it (say, ETH_RPC_URL or PYTHONPATH) before starting the next process."""

    def __init__(self, var_dir: Path, env: Mapping[str, str]) -> None:
        self.var_dir = var_dir
        self.env: dict[str, str] = {**os.environ, "HASHWORK_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1", **env}
        self.supervisor = Supervisor(var_dir / "logs")
        self.chain: devchain.DevChain | None = None
        self.redis: embedded_redis.EmbeddedRedis | None = None
        self.tag = uuid.uuid4().hex[:6]

    @property
    def deployments_file(self) -> Path:
        return self.var_dir / "chain" / "deployments.json"

    def redis_start(self) -> tuple[embedded_redis.EmbeddedRedis, bool]:
        """The embedded Redis of `var_dir` (REDIS_URL for the children); started here unless one already runs, and
        then also stopped by `stop`. Returns the server and whether this call started it."""
        try:
            server, started = embedded_redis.start(self.var_dir)
        except embedded_redis.EmbeddedRedisError as exc:
            raise LocalStackError(str(exc)) from None
        if started:
            self.redis = server
        self.env["REDIS_URL"] = server.url
        return server, started

    def chain_start(self, port: int | None = None, *, engine: devchain.Engine = "anvil") -> devchain.DevChain:
        """The project's Anvil (on `port`, default a free one), its state kept under var/chain/ so that a restart
        resumes the same chain; ETH_RPC_URL for the children. `engine="hardhat"`: Hardhat Network instead (it
        keeps no state file: a restart starts a new chain)."""
        try:
            self.chain = devchain.start(
                port=port,
                engine=engine,
                state_file=self.var_dir / "chain" / "anvil-state.json" if engine == "anvil" else None,
                log_file=self.var_dir / "logs" / f"{engine}.log",
            )
        except DevChainError as exc:
            raise LocalStackError(str(exc)) from None
        self.env["ETH_RPC_URL"] = self.chain.url
        return self.chain

    def chain_stop(self) -> int:
        """Stop the Anvil `chain_start` started (its state is saved); returns its port, to start it there again."""
        assert self.chain is not None, "chain_stop() without chain_start()"
        port = self.chain.port
        self.chain.stop()
        self.chain = None
        return port

    def contracts_ensure(self) -> Deployment:
        """The contracts on ETH_RPC_URL's chain, as recorded in var/chain/deployments.json; on a local chain that
        has none yet they are deployed first (a remote chain is never deployed to implicitly)."""
        w3 = connect(self.env["ETH_RPC_URL"])
        try:
            found = load_deployment(self.deployments_file, w3.eth.chain_id)
            if w3.eth.get_code(found.escrow):
                return found
        except ChainError:
            pass
        if w3.eth.chain_id not in devchain.LOCAL_CHAIN_IDS:
            raise LocalStackError("No Hashwork contracts on the ETH_RPC_URL chain: run `manage.py chain deploy`.")
        keys = devchain.dev_keys()
        treasury = Sender(w3, keys[-1]).address
        return deploy(w3, Sender(w3, keys[0]), treasury, DEFAULT_FEE_BPS, deployments_file=self.deployments_file)

    def start_services(
        self,
        *,
        port: int,
        web_workers: int,
        settlement: bool = True,
        extra_web_ports: Sequence[int] = (),
        workers: int = 1,
        beats: int = 1,
        web_threads: int = 1,
    ) -> str:
        """The web server on 127.0.0.1:`port`, a marketplace worker, the replay worker, the settlement worker and
        beat, in that order (so they stop the other way round); returns the web server's base URL.

        Scale-out (tests/bench, bench/): one more web server on each of `extra_web_ports`, `workers` marketplace
        workers and `beats` beats (each beat with a schedule file of its own), all on the same database and Redis.
        `web_threads` > 1 runs each web worker process with that many threads (gunicorn's gthread worker)."""
        python = sys.executable
        for n, web_port in enumerate((port, *extra_web_ports)):
            self.supervisor.start(
                "web" if n == 0 else f"web-{n + 1}",
                [python, "-m", "gunicorn", "marketplace.wsgi:application", "--bind", f"127.0.0.1:{web_port}",
                 "--workers", str(web_workers), "--access-logfile", "-", "--graceful-timeout", "10",
                 *(["--worker-class", "gthread", "--threads", str(web_threads)] if web_threads > 1 else [])],
                self.env,
            )  # fmt: skip
        for n in range(workers):
            suffix = "" if n == 0 else f"-{n + 1}"
            self.supervisor.start(
                f"worker{suffix}",
                [python, "-m", "celery", "-A", "marketplace", "worker", "--queues", ",".join(MARKETPLACE_QUEUES),
                 "--concurrency", "2", "--loglevel", "INFO", "--hostname", f"marketplace-{self.tag}{suffix}@%h"],
                self.env,
            )  # fmt: skip
        # Round closes (training replays) have a pool of their own: the worker above never runs one.
        self.supervisor.start(
            "replay",
            [python, "-m", "celery", "-A", "marketplace", "worker", "--queues", ",".join(REPLAY_QUEUES),
             "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"replay-{self.tag}@%h"],
            self.env,
        )  # fmt: skip
        if settlement:
            self.start_settlement()
        self.supervisor.start(
            "beat", [python, "-m", "celery", "-A", "marketplace", "beat", "--loglevel", "INFO"], self.env
        )
        for n in range(1, beats):
            schedule = self.var_dir / f"celerybeat-schedule-{n + 1}"
            self.supervisor.start(
                f"beat-{n + 1}",
                [python, "-m", "celery", "-A", "marketplace", "beat", "--loglevel", "INFO",
                 "--schedule", str(schedule)],
                self.env,
            )  # fmt: skip
        return f"http://127.0.0.1:{port}"

    def start_settlement(self) -> None:
        """The settlement worker: it alone owns the operator key's nonce, so its own queue and one process. Each
        start gets a fresh Celery hostname (the tests restart it while the old name may still be known)."""
        self.supervisor.start(
            "settlement",
            [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--queues", Queue.SETTLEMENT.value,
             "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"settlement-{uuid.uuid4().hex[:6]}@%h"],
            self.env,
        )  # fmt: skip

    def web_wait(self, base_url: str, *, timeout: float) -> None:
        """Wait until the web server answers its health check."""

        def answers() -> bool:
            try:
                return requests.get(f"{base_url}/healthz/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        failure = f"The web server did not answer on {base_url} within {timeout:.0f}s; see var/logs/web.log."
        wait_until(self.supervisor, answers, timeout=timeout, failure=failure)

    def nodeagent(
        self, config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `nodeagent --config CONFIG ARGS…` to its end (the stack's environment unless `env`)."""
        return subprocess.run(
            [sys.executable, "-m", "nodeagent", "--config", str(config), *args],
            cwd=ROOT, env=dict(self.env if env is None else env), capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip

    def agent_enroll(
        self,
        config: Path,
        *,
        base_url: str,
        token: str,
        name: str,
        slots: int = 1,
        force: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> None:
        """Enrol a node with the real `nodeagent enroll` as the operator whose API token is `token`."""
        args = ["enroll", "--marketplace", base_url, "--token", token, "--name", name, "--slots", str(slots)]
        done = self.nodeagent(config, *args, *(["--force"] if force else []), env=env, timeout=timeout)
        if done.returncode != 0:
            raise LocalStackError(f"Enrolling node {name} failed:\n{done.stdout}{done.stderr}")

    @staticmethod
    def agent_argv(config: Path, *, heartbeat_seconds: int) -> list[str]:
        """The command line of `nodeagent run` for an enrolled agent."""
        return [
            sys.executable, "-m", "nodeagent", "--config", str(config), "run",
            "--heartbeat-seconds", str(heartbeat_seconds),
        ]  # fmt: skip

    def agent_start(self, name: str, config: Path, *, heartbeat_seconds: int) -> None:
        """Run an enrolled agent as a supervised process (`name` is its log's name and the one `stop` reports)."""
        self.supervisor.start(name, self.agent_argv(config, heartbeat_seconds=heartbeat_seconds), self.env)

    def stop(self) -> Stopped:
        """Stop every process newest first, then the chain and the Redis this stack started."""
        stopped = Stopped(processes=self.supervisor.stop_all())
        if self.chain is not None:
            self.chain.stop()
            self.chain, stopped.chain = None, True
        if self.redis is not None:
            stopped.redis = embedded_redis.stop(self.var_dir)
            self.redis = None
        return stopped


class PosterClient:
    """A poster's side of the REST API, authenticated by their API token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def job_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /api/jobs/: the new draft job with its quote; LocalStackError with the server's reply otherwise."""
        reply = self.session.post(f"{self.base_url}/api/jobs/", json=body, timeout=self.timeout)
        if reply.status_code != 201:
            raise LocalStackError(
                f"Posting a {body.get('kind')} job failed with HTTP {reply.status_code}: {reply.text}"
            )
        job: dict[str, Any] = reply.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.session.get(f"{self.base_url}/api/jobs/{job_id}/", timeout=self.timeout).json()
        return job

    def output_download(self, job_id: str, target: Path) -> Path:
        """GET /api/jobs/ID/output/ (a dataset or a model, as a zip) into `target`."""
        reply = self.session.get(f"{self.base_url}/api/jobs/{job_id}/output/", timeout=60)
        reply.raise_for_status()
        target.write_bytes(reply.content)
        return target
