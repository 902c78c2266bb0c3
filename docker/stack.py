"""Hashwork's whole stack as containers on this host, from the local images (`make docker-up|docker-down|docker-demo`).

    python docker/stack.py up      start the stack and leave it running (prints the dashboard, logins, how to stop)
    python docker/stack.py down    stop and remove it (its containers, volumes and secrets)
    python docker/stack.py demo    start it, run the demo's render job on it (`manage.py demo --headless --no-train
                                   --stack docker`, on this host), print the summary and remove it all again

Containers: postgres, redis, anvil, the one-shots migrate and deploy, web, worker, replay, settlement, beat, flower
and two node agents, from hashwork/{postgres,redis,anvil,marketplace,nodeagent}:local (`make images`). The engine
has no bridge network, so every container uses host networking and binds 127.0.0.1 on a port of its own: the port
base (default 17000) + 0 postgres, +1 redis, +2 anvil, +3 web, +4 flower. The secrets are generated per stack and
kept 0600 in var/docker/PROJECT/stack.json while it runs; each container's log is saved in var/docker/PROJECT/logs/
when it is removed. docker/compose.yml is the same stack for production (bridge network, service names).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docker.errors import DockerException, ImageNotFound  # noqa: E402

from marketplace.core import dockerstack as ds  # noqa: E402
from marketplace.core.queues import MARKETPLACE_QUEUES, REPLAY_QUEUES, Queue  # noqa: E402

DEFAULT_PROJECT = "hashwork-docker"
DEFAULT_PORT_BASE = 17000
INFRA = ("postgres", "redis", "anvil")
ONE_SHOTS = ("migrate", "deploy")
# The marketplace's long-running processes, in start order (torn down the other way round).
MARKETPLACE = ("web", "worker", "replay", "settlement", "beat", "flower")
# The images and the variables that replace them (the same names as docker/compose.yml's).
IMAGES = {
    "postgres": ("HASHWORK_POSTGRES_IMAGE", "hashwork/postgres:local"),
    "redis": ("HASHWORK_REDIS_IMAGE", "hashwork/redis:local"),
    "anvil": ("HASHWORK_ANVIL_IMAGE", "hashwork/anvil:local"),
    "marketplace": ("HASHWORK_MARKETPLACE_IMAGE", "hashwork/marketplace:local"),
    "nodeagent": ("HASHWORK_NODEAGENT_IMAGE", "hashwork/nodeagent:local"),
}
SECOND = 1_000_000_000  # the Engine API counts health-check times in nanoseconds


def commands(*, web_bind: str, flower_options: list[str]) -> dict[str, list[str]]:
    """Each marketplace service's command line; docker/compose.yml has the same ones (tests/deploy checks it), with
    its own listen addresses (0.0.0.0 on its bridge network, here 127.0.0.1 and a port of the stack's)."""
    celery = ["celery", "-A", "marketplace"]
    return {
        "migrate": ["python", "manage.py", "migrate", "--noinput"],
        "deploy": ["python", "docker/deploy_contracts.py"],
        # Threads, so that a slow upload of a large result does not trip the worker timeout.
        "web": ["gunicorn", "marketplace.wsgi:application", "--bind", web_bind, "--worker-class", "gthread",
                "--workers", "3", "--threads", "4", "--timeout", "120", "--access-logfile", "-"],
        # Node names of their own: on host networking every container has this host's name.
        "worker": [*celery, "worker", "--hostname", "worker@%h", "--queues", ",".join(MARKETPLACE_QUEUES),
                   "--loglevel", "INFO"],
        "replay": [*celery, "worker", "--hostname", "replay@%h", "--queues", ",".join(REPLAY_QUEUES),
                   "--concurrency", "1", "--loglevel", "INFO"],
        "settlement": [*celery, "worker", "--hostname", "settlement@%h", "--queues", Queue.SETTLEMENT.value,
                       "--concurrency", "1", "--loglevel", "INFO"],
        "beat": [*celery, "beat", "--loglevel", "INFO"],
        "flower": [*celery, "flower", *flower_options],
    }  # fmt: skip


def celery_healthcheck(node: str) -> dict[str, Any]:
    """compose's: the worker answers a remote-control ping."""
    test = f"celery -A marketplace inspect ping --destination {node}@$HOSTNAME --timeout 10"
    return {"test": ["CMD-SHELL", test], "interval": 60 * SECOND, "timeout": 30 * SECOND, "retries": 3,
            "start_period": 60 * SECOND}  # fmt: skip


class StackFailed(Exception):
    """A container did not come up; the message names it and ends with its last log lines."""


def say(message: str) -> None:
    print(message, flush=True)


# Starting ----------------------------------------------------------------------------------------------------------


class Stack:
    """One stack's containers: started in order, waited on, torn down."""

    def __init__(self, state: ds.StackState, engine: Any, *, timeout: float = 180.0) -> None:
        self.state = state
        self.engine = engine
        self.timeout = timeout
        self.media = f"{state.project}-media"
        # Creating a container takes seconds here: each group's are created at once, then waited on together.
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.creating: list[Future[Any]] = []
        self.group_started: float | None = None

    def run(self, service: str, image: str, *, command: list[str] | None = None, env: dict[str, str] | None = None,
            volumes: dict[str, dict[str, str]] | None = None, healthcheck: dict[str, Any] | None = None,
            one_shot: bool = False) -> None:  # fmt: skip
        extra = {ds.LABEL_ONE_SHOT: "1"} if one_shot else {}
        self.group_started = self.group_started or time.monotonic()
        self.creating.append(self.pool.submit(
            self.engine.containers.run,
            self.state.images[image], command=command, name=ds.container_name(self.state.project, service),
            labels=ds.labels(self.state.project, service, **extra), environment=env or {}, volumes=volumes or {},
            healthcheck=healthcheck, network_mode="host", detach=True,
        ))  # fmt: skip

    def mounts(self, *, media: bool, chain: str | None) -> dict[str, dict[str, str]]:
        found = {self.media: {"bind": "/var/lib/hashwork/media", "mode": "rw"}} if media else {}
        if chain:
            found[str(self.state.chain_dir)] = {"bind": "/var/lib/hashwork/chain", "mode": chain}
        return found

    def start_infra(self) -> None:
        s = self.state
        # The images' own health checks, every second (the Engine API of this docker.io has no start interval).
        fast = {"interval": SECOND}
        self.run("postgres", "postgres", healthcheck=fast, env={
            "POSTGRES_USER": "hashwork", "POSTGRES_DB": "hashwork", "POSTGRES_PASSWORD": s.postgres_password,
            "PGPORT": str(s.port("postgres")), "POSTGRES_LISTEN": "127.0.0.1"})  # fmt: skip
        self.run("redis", "redis", healthcheck=fast,
                 command=["valkey-server", "--bind", "127.0.0.1", "--port", str(s.port("redis")), "--requirepass",
                          s.redis_password, "--appendonly", "yes", "--maxmemory", "512mb",
                          "--maxmemory-policy", "noeviction"],
                 env={"REDIS_PORT": str(s.port("redis")), "REDIS_PASSWORD": s.redis_password})  # fmt: skip
        self.run("anvil", "anvil", healthcheck=fast, env={"ANVIL_PORT": str(s.port("anvil"))},
                 command=["--host", "127.0.0.1", "--port", str(s.port("anvil")), "--chain-id", str(ds.CHAIN_ID),
                          "--accounts", "10", "--prune-history", "64", "--state", "/var/lib/anvil/state.json",
                          "--state-interval", "30"])  # fmt: skip
        self.wait({name: self.healthy for name in INFRA}, detail={
            "postgres": f"127.0.0.1:{s.port('postgres')}", "redis": f"127.0.0.1:{s.port('redis')}",
            "anvil": s.eth_rpc_url})  # fmt: skip

    def start_one_shots(self) -> None:
        env = self.state.marketplace_env()
        cmd = commands(web_bind="", flower_options=[])
        # Neither needs the other: the schema and the contracts, at once.
        self.run("migrate", "marketplace", command=cmd["migrate"], env=env, one_shot=True)
        self.run("deploy", "marketplace", command=cmd["deploy"], env=env, one_shot=True,
                 volumes=self.mounts(media=False, chain="rw"))  # fmt: skip
        self.wait({name: self.exited_ok for name in ONE_SHOTS},
                  detail={"migrate": "the schema", "deploy": f"the contracts, {self.state.chain_dir}"})  # fmt: skip

    def start_marketplace(self) -> None:
        s = self.state
        env = s.marketplace_env()
        cmd = commands(web_bind=f"127.0.0.1:{s.port('web')}",
                       flower_options=["--address=127.0.0.1", f"--port={s.port('flower')}"])  # fmt: skip
        self.run("web", "marketplace", command=cmd["web"], env={**env, "PORT": str(s.port("web"))},
                 volumes=self.mounts(media=True, chain="ro"), healthcheck={"interval": SECOND})  # fmt: skip
        for name in ("worker", "replay", "settlement"):
            self.run(name, "marketplace", command=cmd[name], env=env, volumes=self.mounts(media=True, chain="ro"),
                     healthcheck=celery_healthcheck(name))  # fmt: skip
        beat_check = "find /var/lib/hashwork -maxdepth 1 -name 'celerybeat-schedule*' -mmin -10 | grep -q ."
        self.run("beat", "marketplace", command=cmd["beat"], env=env, volumes=self.mounts(media=False, chain="ro"),
                 healthcheck={"test": ["CMD-SHELL", beat_check], "interval": 60 * SECOND, "timeout": 10 * SECOND,
                              "retries": 3, "start_period": 60 * SECOND})  # fmt: skip
        flower_check = f"import socket; socket.create_connection(('127.0.0.1', {s.port('flower')}), timeout=5).close()"
        self.run("flower", "marketplace", command=cmd["flower"], env={**env, "FLOWER_BASIC_AUTH": s.flower_auth},
                 healthcheck={"test": ["CMD", "python", "-c", flower_check], "interval": 30 * SECOND,
                              "timeout": 10 * SECOND, "retries": 3, "start_period": 30 * SECOND})  # fmt: skip
        ready = self.logged(" ready.")
        self.wait(
            {"web": self.healthy, "worker": ready, "replay": ready, "settlement": ready,
             "beat": self.logged("beat: Starting"), "flower": self.listening(s.port("flower"))},
            detail={"web": s.web_url, "worker": ", ".join(MARKETPLACE_QUEUES), "replay": ", ".join(REPLAY_QUEUES),
                    "settlement": Queue.SETTLEMENT.value, "beat": "the timer", "flower": s.flower_url},
        )  # fmt: skip

    # Readiness: each probe answers True (ready), False (not yet) or raises StackFailed.

    def container(self, service: str) -> Any:
        return self.engine.containers.get(ds.container_name(self.state.project, service))

    def failed(self, container: Any, why: str) -> StackFailed:
        return StackFailed(f"{container.labels.get(ds.LABEL_SERVICE)} {why}. Its last log lines "
                           f"(docker logs {container.name}):\n{ds.log_tail(container)}")  # fmt: skip

    def alive(self, container: Any) -> None:
        if container.status in ("exited", "dead"):
            raise self.failed(container, f"exited with code {container.attrs['State']['ExitCode']}")

    def healthy(self, container: Any) -> bool:
        self.alive(container)
        health = container.attrs["State"].get("Health", {}).get("Status")
        if health == "unhealthy":
            raise self.failed(container, "is unhealthy")
        return bool(health == "healthy")

    def exited_ok(self, container: Any) -> bool:
        if container.status != "exited":
            return False
        code = container.attrs["State"]["ExitCode"]
        if code != 0:
            raise self.failed(container, f"failed with exit code {code}")
        return True

    def logged(self, marker: str) -> Callable[[Any], bool]:
        def probe(container: Any) -> bool:
            self.alive(container)
            return marker in container.logs().decode(errors="replace")

        return probe

    def listening(self, port: int) -> Callable[[Any], bool]:
        def probe(container: Any) -> bool:
            self.alive(container)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            return False

        return probe

    def wait(self, probes: dict[str, Callable[[Any], bool]], *, detail: dict[str, str]) -> None:
        """One line per service as it gets ready; StackFailed when one fails or the timeout passes."""
        for creating in self.creating:
            creating.result()
        started, pending = self.group_started or time.monotonic(), dict(probes)
        self.creating, self.group_started = [], None
        while pending:
            for name, probe in list(pending.items()):
                container = self.container(name)
                if probe(container):
                    health = container.attrs["State"].get("Health", {}).get("Status")
                    # A worker is ready long before its first health check (a minute in): say what the probe saw.
                    status = "done" if name in ONE_SHOTS else "healthy" if health == "healthy" else "ready"
                    say(f"  {name:<11} {status:<9} {time.monotonic() - started:5.1f} s  {detail[name]}")
                    del pending[name]
            if pending and time.monotonic() - started > self.timeout:
                name = next(iter(pending))
                raise self.failed(self.container(name), f"was not ready within {self.timeout:.0f} s")
            time.sleep(0.5)

    # Tearing down --------------------------------------------------------------------------------------------------

    def teardown(self) -> int:
        """Save each container's log, stop the agents (they hand their work back), remove everything; returns the
        number of containers removed."""
        for creating in self.creating:  # a container still being created would be left behind
            with contextlib.suppress(Exception):
                creating.result()
        found = ds.containers(self.engine, self.state.project)
        self.state.log_dir.mkdir(parents=True, exist_ok=True)
        for container in found:
            with contextlib.suppress(DockerException, OSError):
                service = container.labels.get(ds.LABEL_SERVICE, container.name)
                (self.state.log_dir / f"{service}.log").write_bytes(container.logs())
        agents = [c for c in found if c.labels.get(ds.LABEL_SERVICE, "").startswith("agent-")]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda c: _quietly(c.stop, timeout=10), agents))
            list(pool.map(lambda c: _quietly(c.remove, force=True), found))
        volumes = [self.media, *(f"{self.state.project}-{c.labels[ds.LABEL_SERVICE]}" for c in agents)]
        for name in volumes:
            _quietly(ds.remove_volume, self.engine, name)
        (self.state.state_dir / ds.STATE_FILE).unlink(missing_ok=True)
        return len(found)


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(DockerException):
        call(*args, **kwargs)


# Commands ----------------------------------------------------------------------------------------------------------


def images_check(engine: Any) -> dict[str, str]:
    images = {name: os.environ.get(variable) or default for name, (variable, default) in IMAGES.items()}
    missing = []
    for tag in images.values():
        try:
            engine.images.get(tag)
        except ImageNotFound:
            missing.append(tag)
    if missing:
        raise ds.DockerStackError(f"Missing image(s) {', '.join(missing)}: build them with `make images` first.")
    return images


def ports_check(port_base: int) -> None:
    for service, offset in ds.PORT_OFFSETS.items():
        with socket.socket() as probe:
            # As the servers do: connections in TIME_WAIT from the last stack do not make a port taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port_base + offset))
            except OSError:
                raise ds.DockerStackError(
                    f"Port {port_base + offset} ({service}: --port-base {port_base} + {offset}) is taken on "
                    "127.0.0.1: choose another base with --port-base."
                ) from None


def stack_start(args: argparse.Namespace) -> Stack:
    engine = ds.client()
    if ds.containers(engine, args.project):
        raise ds.DockerStackError(
            f"A stack {args.project!r} already has containers: `python docker/stack.py down"
            f"{_project_flag(args)}` first (or choose another --project)."
        )
    images = images_check(engine)
    ports_check(args.port_base)
    state_dir = args.var_dir / args.project
    state = ds.StackState.new(project=args.project, port_base=args.port_base, state_dir=state_dir, images=images)
    shutil.rmtree(state.log_dir, ignore_errors=True)
    state.chain_dir.mkdir(parents=True, exist_ok=True)
    (state.chain_dir / "deployments.json").unlink(missing_ok=True)  # a new chain: its record comes from `deploy`
    with contextlib.suppress(PermissionError):
        os.chown(state.chain_dir, 10001, 10001)  # the images' user writes the deployment record there
    state.save()
    stack = Stack(state, engine, timeout=args.timeout)
    say(f"Starting the Hashwork stack {args.project!r} (ports {args.port_base}-{args.port_base + 4} on 127.0.0.1):")
    return stack


def host_demo(stack: Stack, *extra: str) -> int:
    """`manage.py demo --stack docker` on this host, against the stack's containers."""
    s = stack.state
    env = {**os.environ, **s.marketplace_env(), "HASHWORK_VAR_DIR": str(s.state_dir),
           "DJANGO_SETTINGS_MODULE": "marketplace.settings", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    argv = [sys.executable, "manage.py", "demo", "--stack", "docker", "--timeout", str(stack.timeout), *extra]
    child = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the demo too (same terminal), SIGTERM only this process: either way, let it stop first.
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=30)
        child.kill()
        raise


def cmd_up(args: argparse.Namespace) -> int:
    stack = stack_start(args)
    try:
        stack.start_infra()
        stack.start_one_shots()
        stack.start_marketplace()
        if host_demo(stack, "--setup-only") != 0:
            raise StackFailed("Setting up the demo users and node agents failed (see above).")
    except BaseException:
        say("Removing what was started…")
        stack.teardown()
        raise
    user, password = stack.state.flower_auth.split(":", 1)
    say(f"  Flower       {stack.state.flower_url}/  (log in as {user} / {password})")
    say(f"The stack is running. Stop and remove it with `make docker-down` (python docker/stack.py down"
        f"{_project_flag(args)}).")  # fmt: skip
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    engine = ds.client()
    found = ds.containers(engine, args.project)
    state_dir = args.var_dir / args.project
    if not found:
        (state_dir / ds.STATE_FILE).unlink(missing_ok=True)
        say(f"No Hashwork stack {args.project!r} is running (no container labelled {ds.LABEL_STACK}={args.project}); "
            "nothing to stop.")  # fmt: skip
        return 0
    try:
        state = ds.StackState.load(state_dir)
    except ds.DockerStackError:  # the state file is gone: the containers' labels are enough to remove them
        state = ds.StackState.new(project=args.project, port_base=0, state_dir=state_dir, images={})
    removed = Stack(state, engine).teardown()
    say(f"Stopped and removed the stack {args.project!r}: {removed} containers (logs in {state.log_dir}).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    stack = stack_start(args)
    code = 1
    try:
        stack.start_infra()
        stack.start_one_shots()
        stack.start_marketplace()
        up_seconds = time.monotonic() - started
        say(f"The stack is up in {up_seconds:.0f} s; running the demo against it:")
        code = host_demo(stack, "--headless", "--no-train", "--images", str(args.images))
        if code == 0:
            summary = json.loads((stack.state.state_dir / "demo-summary.json").read_text())
            summary["stack"] = {
                "project": args.project,
                "port_base": args.port_base,
                "up_seconds": round(up_seconds, 1),
                "demo_seconds": round(time.monotonic() - started - up_seconds, 1),
                "train": False,
            }
            args.summary.parent.mkdir(parents=True, exist_ok=True)
            args.summary.write_text(json.dumps(summary, indent=2) + "\n")
            say(f"Wrote {args.summary}.")
        else:
            say(f"The demo failed (exit code {code}); the containers' logs are kept in {stack.state.log_dir}.")
    finally:
        removed = stack.teardown()
        say(f"Removed the stack's {removed} containers in {time.monotonic() - started:.0f} s in all.")
    return code


def _project_flag(args: argparse.Namespace) -> str:
    return "" if args.project == DEFAULT_PROJECT else f" --project {args.project}"


def _project(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,39}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a project name: 1-40 lowercase letters, digits, '.', "
                                         "'_' or '-', starting with a letter or digit")  # fmt: skip
    return value


def _port_base(value: str) -> int:
    if not value.isdigit() or not 1024 <= int(value) <= 65535 - max(ds.PORT_OFFSETS.values()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a port base: a number from 1024 to 65531")
    return int(value)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--project",
        type=_project,
        default=DEFAULT_PROJECT,
        help=f"the stack's name: its containers' prefix and label (default {DEFAULT_PROJECT})",
    )
    common.add_argument(
        "--port-base",
        type=_port_base,
        default=DEFAULT_PORT_BASE,
        help=f"first of the five 127.0.0.1 ports the stack binds (default {DEFAULT_PORT_BASE})",
    )
    common.add_argument(
        "--var-dir",
        type=Path,
        default=ROOT / "var" / "docker",
        help="where each stack keeps its secrets, deployment record and saved logs "
        "(default var/docker; the stack's own folder is VAR_DIR/PROJECT)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for each group of services, and for each demo step (default 180)",
    )
    main = argparse.ArgumentParser(
        prog="docker/stack.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = main.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start the stack and leave it running", allow_abbrev=False)
    up.set_defaults(run=cmd_up, parser=up)
    down = sub.add_parser("down", parents=[common], help="stop and remove the stack", allow_abbrev=False)
    down.set_defaults(run=cmd_down, parser=down)
    demo = sub.add_parser(
        "demo", parents=[common], help="start the stack, run the demo's render job, remove it", allow_abbrev=False
    )
    demo.add_argument(
        "--summary",
        type=Path,
        default=ROOT / "var" / "docker-demo-summary.json",
        help="where to write the summary (default var/docker-demo-summary.json)",
    )
    demo.add_argument("--images", type=int, default=4,
                      help="images the render job renders, in two chunks or more (default 4: about 3 minutes in all "
                      "on 2 cores; `make demo` renders 12)")  # fmt: skip
    demo.set_defaults(run=cmd_demo, parser=demo)
    return main


def main(argv: list[str] | None = None) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:  # said by the command's own parser, whose usage lists what it takes
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.timeout <= 0:
        args.parser.error("--timeout must be a positive number of seconds")

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code: int = args.run(args)
    except ds.DockerStackError as exc:
        say(f"stack: {exc}")
        return 1
    except StackFailed as exc:
        say(f"stack: {exc}")
        return 1
    except DockerException as exc:
        say(f"stack: the Docker engine refused a request: {exc}")
        return 1
    except KeyboardInterrupt:
        say("stack: interrupted; everything it started was removed.")
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
