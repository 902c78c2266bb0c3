"""A whole local Hashwork for end-to-end tests: its own database and Redis key prefix, the web server, a
marketplace worker, beat, and real `nodeagent` processes, all driven through their public interfaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
from contracts.bindings import ComputeToken, JobEscrow
from contracts.connection import connect
from contracts.deploy import Deployment, load_deployment
from contracts.sender import Sender
from marketplace.core.localstack import ROOT, LocalStack, PosterClient
from marketplace.core.ports import free_port
from marketplace.core.processes import die_with_parent
from tests.helpers import wait_for

__all__ = ["ROOT", "Agent", "Stack"]


class Agent:
    """One real node agent: enrolled with `nodeagent enroll`, run with `nodeagent run`."""

    def __init__(
        self, stack: Stack, name: str, extra_env: dict[str, str] | None = None, operator: str = "operator"
    ) -> None:
        self.stack = stack
        self.name = name
        # The username of the node's operator (the dashboard login that sees it).
        self.operator = operator
        self.config = stack.var_dir / "agents" / f"{name}.json"
        self.env = {**stack.env, **(extra_env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = stack.var_dir / "logs" / f"agent-{name}.log"

    def enroll(self, operator_token: str, slots: int = 1) -> None:
        self.stack.local.agent_enroll(
            self.config, base_url=self.stack.url, token=operator_token, name=self.name, slots=slots, env=self.env
        )
        conf = json.loads(self.config.read_text())
        self.node_id: str = conf["node_id"]
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Node {conf['token']}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # Its own session, so a test can kill the agent with everything it started, as a crash would.
        self.process = subprocess.Popen(
            LocalStack.agent_argv(self.config, heartbeat_seconds=1),
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
    """The shared local launcher (`marketplace.core.localstack`) on a database and Redis prefix of its own, with
    short leases, and the test's view of it: a poster's session, agents, jobs."""

    def __init__(
        self,
        var_dir: Path,
        *,
        chain: bool | devchain.Engine = False,
        settlement: bool = True,
        web_servers: int = 1,
        workers: int = 1,
        beats: int = 1,
        web_threads: int = 1,
        **settings_env: str,
    ) -> None:
        self.var_dir = var_dir
        # Scale-out (tests/bench): web servers on ports of their own (`urls`), marketplace workers and beats.
        self.web_servers, self.workers, self.beats = web_servers, workers, beats
        self.web_threads = web_threads
        self.with_chain = chain
        # chain=True: Anvil; chain="hardhat": Hardhat Network (the product's second local chain).
        self.engine: devchain.Engine = chain if isinstance(chain, str) else "anvil"
        self.with_settlement = settlement
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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_ports = [free_port() for _ in range(web_servers - 1)]
        self.urls = [self.url, *(f"http://127.0.0.1:{port}" for port in self.extra_ports)]
        self.local = LocalStack(
            var_dir,
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": settings.REDIS_URL,
                "HASHWORK_REDIS_PREFIX": self.prefix,
                "HASHWORK_DEV_FUNDING": "true",
                "NODE_ONLINE_SECONDS": "4",
                "HASHWORK_LEASE_SECONDS": "8",
                "HASHWORK_START_WINDOW_SECONDS": "8",
                **settings_env,
            },
        )
        # The launcher's own dict and supervisor: what a test changes in `env` reaches the next process started.
        self.env = self.local.env
        self.supervisor = self.local.supervisor
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
        return self.local.nodeagent(self.var_dir / "agents" / f"{agent}.json", *args, env=env)

    @property
    def anvil(self) -> devchain.DevChain | None:
        return self.local.chain

    def chain_start(self, port: int | None = None) -> None:
        """The stack's own Anvil, its state kept under the stack's var dir (so a restart keeps the chain)."""
        self.local.chain_start(port, engine=self.engine)

    def chain_stop(self) -> int:
        return self.local.chain_stop()

    def w3(self) -> Web3:
        return connect(self.env["ETH_RPC_URL"])

    def deployment(self) -> Deployment:
        return load_deployment(self.local.deployments_file, devchain.ANVIL_CHAIN_ID)

    def start_settlement(self) -> None:
        self.local.start_settlement()

    def start(self) -> Stack:
        if self.with_chain:
            self.local.chain_start(engine=self.engine)
            self.local.contracts_ensure()
        self.manage("migrate", "--noinput", "-v", "0")
        self.local.start_services(
            port=self.port,
            web_workers=3,
            settlement=self.with_settlement,
            extra_web_ports=self.extra_ports,
            workers=self.workers,
            beats=self.beats,
            web_threads=self.web_threads,
        )
        for url in self.urls:
            self.local.web_wait(url, timeout=60)
        self.poster_token = self.manage("token", "poster", "--create")
        self.operator_token = self.manage("token", "operator", "--create")
        self.operator_tokens = {"operator": self.operator_token}
        self.client = PosterClient(self.url, self.poster_token)
        self.poster = self.client.session
        return self

    def operator_token_of(self, username: str) -> str:
        """The API token of operator `username`, the user made on first use."""
        if username not in self.operator_tokens:
            self.operator_tokens[username] = self.manage("token", username, "--create")
        return self.operator_tokens[username]

    def operator_tokens_many(self, count: int, *, prefix: str = "sim-operator") -> list[str]:
        """API tokens of `count` operators (`prefix`-0, -1, …), made on first use: a fleet of simulated nodes needs
        one per ENROLMENTS_PER_HOUR nodes, and replicas of a task go to distinct operators."""
        return [self.operator_token_of(f"{prefix}-{n}") for n in range(count)]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the stack's own database (PostgreSQL), for checking its invariants."""
        assert self.database is not None, "sql() needs the PostgreSQL stack"
        db = settings.DATABASES["default"]
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=self.database) as conn:
            return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]

    def agent(
        self, name: str, *, slots: int = 1, extra_env: dict[str, str] | None = None, operator: str | None = None
    ) -> Agent:
        """Enrol and start a real agent. Replicas of a task go to distinct operators, so each agent has its own: the
        first one's is `operator`, later ones' `operator-<name>`, unless `operator` names one."""
        username = operator or ("operator" if not self.agents else f"operator-{name}")
        agent = Agent(self, name, extra_env, operator=username)
        agent.enroll(self.operator_token_of(username), slots=slots)
        agent.start()
        self.agents.append(agent)
        return agent

    def post_job(
        self, spec: dict[str, Any], *, replication: int, price: int = 10**18, on_chain_extra: str | None = None
    ) -> str:
        """Post a benchmark job and fund it: with the dev service, or in the escrow (`chain fund-dev`, with
        `on_chain_extra` tokens beyond what it needs)."""
        job_id: str = self.client.job_create(
            {"kind": "benchmark", "spec": spec, "price_per_replica": str(price), "replication": replication}
        )["id"]
        if on_chain_extra is None:
            self.manage("job", "fund-dev", job_id)
        else:
            self.manage("chain", "fund-dev", job_id, "--extra", on_chain_extra)
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.job(job_id)

    def escrow_fund(self, job_id: str, amount: int, *, who: int = 1) -> bytes:
        """Fund `job_id` in the escrow as its poster does over the API: bind the job's escrow id to the wallet
        of Anvil dev account `who` (POST /api/jobs/ID/escrow/), then fund that id with the job's terms and the
        earliest deadline that starts it. Returns the escrow id."""
        w3, dep = self.w3(), self.deployment()
        poster = Sender(w3, devchain.dev_keys(who + 1)[who])
        reply = self.poster.post(f"{self.url}/api/jobs/{job_id}/escrow/", json={"wallet": poster.address}, timeout=10)
        assert reply.status_code == 200, reply.text
        terms = reply.json()
        key = bytes.fromhex(terms["escrow_id"][2:])
        ComputeToken(w3, dep.token, Sender(w3, devchain.dev_keys(1)[0])).mint(poster.address, amount)
        ComputeToken(w3, dep.token, poster).approve(dep.escrow, amount)
        JobEscrow(w3, dep.escrow, poster).fund(
            key,
            amount,
            terms["deadline_min"],
            max_payouts=terms["max_payouts"],
            max_payout=int(terms["max_payout"]),
        )
        return key

    def escrow_key(self, job_id: str) -> bytes:
        """The escrow id the job is bound to (GET /api/jobs/ID/escrow/)."""
        reply = self.poster.get(f"{self.url}/api/jobs/{job_id}/escrow/", timeout=10).json()
        return bytes.fromhex(reply["escrow_id"][2:])

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
        self.local.stop()
        admin = redis.Redis.from_url(settings.REDIS_URL)
        for key in admin.scan_iter(match=f"{self.prefix}*", count=500):
            admin.delete(key)
        for user in admin.execute_command("ACL", "USERS"):
            name = user.decode() if isinstance(user, bytes) else user
            if name.startswith(f"{self.prefix.rstrip(':')}.node."):
                admin.execute_command("ACL", "DELUSER", name)
        if self.database:
            self._pg_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
