"""Hashwork as containers on this host (docker/stack.py; `manage.py demo --stack docker`): ports, secrets, labels,
the node agent containers and a supervisor whose check() fails when a container of the stack stops."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docker.client import DockerClient, from_env
from docker.errors import DockerException, NotFound

from marketplace.core.processes import ChildDied, Supervisor

LABEL_STACK = "io.hashwork.stack"
LABEL_SERVICE = "io.hashwork.service"
LABEL_NODE = "io.hashwork.node"
# One-shot containers (migrate, deploy) exit 0 when done: check() does not count that as a failure.
LABEL_ONE_SHOT = "io.hashwork.one-shot"
STATE_FILE = "stack.json"
# Offsets from the port base: every service binds 127.0.0.1 on its own port (host networking, no bridge).
PORT_OFFSETS = {"postgres": 0, "redis": 1, "anvil": 2, "web": 3, "flower": 4}
CHAIN_ID = 31337


class DockerStackError(RuntimeError):
    """The Docker engine, an image or the stack's state is not as needed; the message says what to do."""


@dataclass(frozen=True)
class StackState:
    """One stack's settings and generated secrets, kept 0600 in `state_dir`/stack.json while it runs."""

    project: str
    port_base: int
    state_dir: Path
    images: dict[str, str]
    postgres_password: str = field(repr=False)
    redis_password: str = field(repr=False)
    secret_key: str = field(repr=False)
    flower_auth: str = field(repr=False)

    @classmethod
    def new(cls, *, project: str, port_base: int, state_dir: Path, images: Mapping[str, str]) -> StackState:
        """Fresh secrets (letters and digits: they go into URLs), never written into an image."""
        return cls(
            project=project,
            port_base=port_base,
            state_dir=state_dir,
            images=dict(images),
            postgres_password=secrets.token_hex(24),
            redis_password=secrets.token_hex(24),
            secret_key=secrets.token_urlsafe(50),
            flower_auth=f"admin:{secrets.token_hex(12)}",
        )

    def port(self, service: str) -> int:
        return self.port_base + PORT_OFFSETS[service]

    @property
    def database_url(self) -> str:
        return f"postgres://hashwork:{self.postgres_password}@127.0.0.1:{self.port('postgres')}/hashwork"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.port('redis')}/0"

    @property
    def eth_rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port('anvil')}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.port('web')}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.port('flower')}"

    @property
    def chain_dir(self) -> Path:
        """The deployment record: written by the `deploy` one-shot, read by every other process and the host."""
        return self.state_dir / "chain"

    @property
    def log_dir(self) -> Path:
        """Where each container's log is saved when the stack is torn down."""
        return self.state_dir / "logs"

    def marketplace_env(self) -> dict[str, str]:
        """What every marketplace process gets, in a container or (the demo) on this host."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "HASHWORK_REDIS_PREFIX": "hashwork:",
            "SECRET_KEY": self.secret_key,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "localhost,127.0.0.1",
            "ETH_RPC_URL": self.eth_rpc_url,
            "CHAIN_CONFIRMATIONS": "0",
            # The stack's chain is a local Anvil: the dashboard may fund jobs from its development wallets.
            "HASHWORK_DEV_FUNDING": "true",
        }

    def save(self) -> Path:
        """Write stack.json, readable by its owner only (it holds the secrets)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / STATE_FILE
        data = {**asdict(self), "state_dir": str(self.state_dir)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
        path.chmod(0o600)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> StackState:
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DockerStackError(
                f"Cannot read the stack's state {path} ({exc}); is it running (docker/stack.py up)?"
            ) from None
        return cls(**{**data, "state_dir": Path(data["state_dir"])})


def client() -> DockerClient:
    """The engine's client; DockerStackError saying how to start one when none answers."""
    try:
        engine = from_env(timeout=120)
        engine.ping()
    except DockerException as exc:
        raise DockerStackError(
            f"No Docker engine answers ({exc}). Start one with `make docker-engine` (root on Debian), then retry."
        ) from None
    return engine


def container_name(project: str, service: str) -> str:
    return f"{project}-{service}"


def labels(project: str, service: str, **extra: str) -> dict[str, str]:
    return {LABEL_STACK: project, LABEL_SERVICE: service, **extra}


def containers(engine: DockerClient, project: str) -> list[Any]:
    """Every container of the stack `project`, running or not."""
    found: list[Any] = engine.containers.list(all=True, filters={"label": f"{LABEL_STACK}={project}"})
    return found


def log_tail(container: Any, lines: int = 25) -> str:
    try:
        return str(container.logs(tail=lines).decode(errors="replace")).rstrip()
    except DockerException:
        return "(no log)"


def agent_start(state: StackState, engine: DockerClient, *, index: int, name: str, token: str) -> Any:
    """Node agent `index` as a container: it enrols as `name` with the operator token `token` on its first start
    (docker/nodeagent-entrypoint.sh), then runs. Its tasks run as its forked child: no Docker socket is mounted
    (that would give a task root on this host)."""
    service = f"agent-{index}"
    return engine.containers.run(
        state.images["nodeagent"],
        command=["run", "--heartbeat-seconds", "2"],
        name=container_name(state.project, service),
        labels=labels(state.project, service, **{LABEL_NODE: name}),
        environment={
            "NODEAGENT_MARKETPLACE_URL": state.web_url,
            "NODEAGENT_ENROLL_TOKEN": token,
            "NODEAGENT_NAME": name,
            "NODEAGENT_SLOTS": "1",
        },
        volumes={f"{state.project}-{service}": {"bind": "/var/lib/nodeagent", "mode": "rw"}},
        network_mode="host",
        detach=True,
    )


def agents_running(state: StackState, engine: DockerClient) -> dict[int, str]:
    """The stack's running agent containers: index -> the node name each enrolled as."""
    running: dict[int, str] = {}
    for container in containers(engine, state.project):
        service = container.labels.get(LABEL_SERVICE, "")
        if service.startswith("agent-") and container.status == "running":
            running[int(service.removeprefix("agent-"))] = container.labels.get(LABEL_NODE, "")
    return running


class ContainerSupervisor(Supervisor):
    """supervisor.check() for a stack of containers: ChildDied, with its last log lines, once a long-running
    container of the stack is no longer running (a crashed worker, an agent that could not enrol)."""

    def __init__(self, state: StackState, engine: DockerClient, *, interval: float = 1.0) -> None:
        super().__init__(state.log_dir)
        self.state = state
        self.engine = engine
        self.interval = interval
        self._checked = 0.0

    def check(self) -> None:
        super().check()
        # The demo's waits poll every 0.2 s; asking the engine once a second is enough.
        if time.monotonic() - self._checked < self.interval:
            return
        self._checked = time.monotonic()
        for container in containers(self.engine, self.state.project):
            if container.labels.get(LABEL_ONE_SHOT) or container.status in ("running", "created", "restarting"):
                continue
            code = None
            with contextlib.suppress(DockerException, KeyError):
                code = container.attrs["State"]["ExitCode"]
            raise ChildDied(
                f"The {container.labels.get(LABEL_SERVICE)} container ({container.name}) is {container.status} "
                f"(exit code {code}). Its last log lines:\n{log_tail(container)}"
            )


def remove_volume(engine: DockerClient, name: str) -> bool:
    with contextlib.suppress(NotFound):
        engine.volumes.get(name).remove(force=True)
        return True
    return False
