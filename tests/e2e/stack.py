"""A whole local Hashwork for end-to-end tests: its own database and Redis key prefix, the web server, a
marketplace worker, beat, and real `nodeagent` processes, all driven through their public interfaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from django.conf import settings
from web3 import Web3

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import Deployment, deploy, load_deployment
from contracts.sender import Sender
from marketplace.core.processes import Supervisor, die_with_parent
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Agent:
    """One real node agent: enrolled with `nodeagent enroll`, run with `nodeagent run`."""

    def __init__(self, stack: Stack, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.stack = stack
        self.name = name
        self.config = stack.var_dir / "agents" / f"{name}.json"
        self.env = {**stack.env, **(extra_env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = stack.var_dir / "logs" / f"agent-{name}.log"

    def enroll(self, operator_token: str, slots: int = 1) -> None:
        done = self.stack.nodeagent(
            self.name,
            "enroll", "--marketplace", self.stack.url, "--token", operator_token, "--name", self.name,
            "--slots", str(slots), env=self.env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        conf = json.loads(self.config.read_text())
        self.node_id: str = conf["node_id"]
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Node {conf['token']}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # Its own session, so a test can kill the agent with everything it started, as a crash would.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "--config", str(self.config), "run", "--heartbeat-seconds", "1"],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip

    def signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait()

    def me(self) -> dict[str, Any]:
        body: dict[str, Any] = self.api.get(f"{self.stack.url}/api/nodes/me/", timeout=10).json()
        return body

    def assignments(self) -> list[dict[str, Any]]:
        reply = self.api.get(f"{self.stack.url}/api/nodes/me/assignments/?limit=500", timeout=10).json()
        return list(reply["results"])


class Stack:
    def __init__(self, var_dir: Path, *, chain: bool = False, settlement: bool = True, **settings_env: str) -> None:
        self.var_dir = var_dir
        self.with_chain = chain
        self.with_settlement = settlement
        self.anvil: devchain.DevChain | None = None
        self.tag = uuid.uuid4().hex[:10]
        self.prefix = f"e2e-{self.tag}:"
        self.database: str | None = None
        db = settings.DATABASES["default"]
        if db["ENGINE"] == "django.db.backends.postgresql":
            self.database = f"hw_e2e_{self.tag}"
            self._pg_admin(f'CREATE DATABASE "{self.database}"')
            database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{self.database}"
        else:
            database_url = f"sqlite:///{var_dir / 'e2e.sqlite3'}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HASHWORK_VAR_DIR": str(var_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "HASHWORK_REDIS_PREFIX": self.prefix,
            "HASHWORK_DEV_FUNDING": "true",
            "NODE_ONLINE_SECONDS": "4",
            "HASHWORK_LEASE_SECONDS": "8",
            "HASHWORK_START_WINDOW_SECONDS": "8",
            "PYTHONUNBUFFERED": "1",
            **settings_env,
        }
        self.supervisor = Supervisor(var_dir / "logs")
        self.agents: list[Agent] = []

    def _pg_admin(self, sql: str) -> None:
        db = settings.DATABASES["default"]
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout.strip()

    def nodeagent(self, agent: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run `nodeagent --config <agent's config> ARGS…`."""
        config = self.var_dir / "agents" / f"{agent}.json"
        return subprocess.run(
            [sys.executable, "-m", "nodeagent", "--config", str(config), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def chain_start(self, port: int | None = None) -> None:
        """The stack's own Anvil, its state kept under the stack's var dir (so a restart keeps the chain)."""
        self.anvil = devchain.start(
            port=port,
            state_file=self.var_dir / "chain" / "anvil-state.json",
            log_file=self.var_dir / "logs" / "anvil.log",
        )
        self.env["ETH_RPC_URL"] = self.anvil.url

    def chain_stop(self) -> int:
        assert self.anvil is not None
        port = self.anvil.port
        self.anvil.stop()
        return port

    def w3(self) -> Web3:
        return connect(self.env["ETH_RPC_URL"])

    def deployment(self) -> Deployment:
        return load_deployment(self.var_dir / "chain" / "deployments.json", devchain.ANVIL_CHAIN_ID)

    def start_settlement(self) -> None:
        self.supervisor.start(
            "settlement",
            [sys.executable, "-m", "celery", "-A", "marketplace", "worker", "--concurrency", "1",
             "--loglevel", "INFO", "--queues", "mp.settlement", "--hostname", f"settle-{uuid.uuid4().hex[:6]}@%h"],
            self.env,
        )  # fmt: skip

    def start(self) -> Stack:
        if self.with_chain:
            self.chain_start()
            w3 = self.w3()
            keys = devchain.dev_keys()
            deploy(w3, Sender(w3, keys[0]), Sender(w3, keys[-1]).address, 250,
                   deployments_file=self.var_dir / "chain" / "deployments.json")  # fmt: skip
        self.manage("migrate", "--noinput", "-v", "0")
        python = sys.executable
        self.supervisor.start(
            "web",
            [python, "-m", "gunicorn", "marketplace.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "3", "--access-logfile", "-"],
            self.env,
        )  # fmt: skip
        self.supervisor.start(
            "worker",
            [python, "-m", "celery", "-A", "marketplace", "worker", "--concurrency", "2", "--loglevel", "INFO",
             "--queues", "mp.default,mp.scheduler,mp.verify,mp.aggregate,mp.chain", "--hostname", f"mp-{self.tag}@%h"],
            self.env,
        )  # fmt: skip
        if self.with_settlement:
            self.start_settlement()
        self.supervisor.start(
            "beat",
            [python, "-m", "celery", "-A", "marketplace", "beat", "--loglevel", "INFO",
             "--schedule", str(self.var_dir / "beat-schedule")],
            self.env,
        )  # fmt: skip

        def up() -> bool:
            self.supervisor.check()
            try:
                return requests.get(f"{self.url}/healthz/", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout=60, what="the web server")
        self.poster_token = self.manage("token", "poster", "--create")
        self.operator_token = self.manage("token", "operator", "--create")
        self.poster = requests.Session()
        self.poster.headers["Authorization"] = f"Token {self.poster_token}"
        return self

    def agent(self, name: str, *, slots: int = 1, extra_env: dict[str, str] | None = None) -> Agent:
        agent = Agent(self, name, extra_env)
        agent.enroll(self.operator_token, slots=slots)
        agent.start()
        self.agents.append(agent)
        return agent

    def post_job(
        self, spec: dict[str, Any], *, replication: int, price: int = 10**18, on_chain_extra: str | None = None
    ) -> str:
        """Post a benchmark job and fund it: with the dev service, or in the escrow (`chain fund-dev`, with
        `on_chain_extra` tokens beyond what it needs)."""
        reply = self.poster.post(
            f"{self.url}/api/jobs/",
            json={"kind": "benchmark", "spec": spec, "price_per_replica": str(price), "replication": replication},
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        job_id: str = reply.json()["id"]
        if on_chain_extra is None:
            self.manage("job", "fund-dev", job_id)
        else:
            self.manage("chain", "fund-dev", job_id, "--extra", on_chain_extra)
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.poster.get(f"{self.url}/api/jobs/{job_id}/", timeout=10).json()
        return body

    def results(self, job_id: str) -> list[dict[str, Any]]:
        reply = self.poster.get(f"{self.url}/api/jobs/{job_id}/results/?limit=500", timeout=10).json()
        return list(reply["results"])

    def artifact(self, result: dict[str, Any]) -> bytes:
        return self.poster.get(f"{self.url}{result['artifact_url']}", timeout=10).content

    def wait_job(self, job_id: str, state: str = "completed", timeout: float = 180) -> dict[str, Any]:
        def done() -> bool:
            self.supervisor.check()
            current = self.job(job_id)["state"]
            if current in {"failed", "cancelled", "expired"} and current != state:
                raise AssertionError(f"job {job_id} ended {current}: {self.job(job_id)['state_reason']}")
            return bool(current == state)

        wait_for(done, timeout=timeout, what=f"job {job_id} to be {state}", interval=0.3)
        return self.job(job_id)

    def stop(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        self.supervisor.stop_all()
        admin = redis.Redis.from_url(settings.REDIS_URL)
        for key in admin.scan_iter(match=f"{self.prefix}*", count=500):
            admin.delete(key)
        for user in admin.execute_command("ACL", "USERS"):
            name = user.decode() if isinstance(user, bytes) else user
            if name.startswith(f"{self.prefix.rstrip(':')}.node."):
                admin.execute_command("ACL", "DELUSER", name)
        if self.anvil is not None:
            self.anvil.stop()
        if self.database:
            self._pg_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
