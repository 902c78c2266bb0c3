"""Runs one assignment in a fresh, locked-down container of the node-agent image (through the Docker SDK), so that
the runner never sees the agent's config, wallet key or token, nor the network.

The container: no network, a read-only root filesystem and a private tmpfs /tmp, no capabilities, no new
privileges, a non-root user (`task`, uid 10002, when the agent is root; else the agent's own uid, which owns nothing
in the image), memory/CPU/process limits, and exactly three mounts: the assignment's workdir (writable: the runner
writes artifact, metrics.json and progress there), its inputs/ and payload.json read-only inside it, and for a
train job that job's residual folder (STATE/train/<job>). It is killed at the kind's time limit, or by the agent
when the marketplace revokes the lease, and removed afterwards. Without Docker the agent forks the runner as
before (nodeagent.child), unsandboxed, and says so.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from nodeagent.config import SANDBOX_CHOICES as CHOICES

logger = logging.getLogger("nodeagent.sandbox")
STATE_FILE = "sandbox.json"
TASK_UID = 10002
LABEL = "io.hashwork.node"
# Where the assignment's folders appear in the container. The train runner finds the node's residuals two levels
# above its workdir (STATE/train/<job>), so the same shape is kept under ROOT.
ROOT = PurePosixPath("/sandbox")
# Threads count as pids: torch and Blender start one per core, so this leaves room for honest work, not a fork bomb.
PIDS_LIMIT = 512
# Memory left to the agent, its worker and the system; the rest is shared between the slots.
HEADROOM_MB = 1024
MIN_MEMORY_MB = 512
LOG_TAIL_BYTES = 64 * 1024
# The container's own tmpfs (nothing of the host's /tmp), also its HOME: caches of numpy, torch and Blender go there.
TASK_TMP = "/tmp"  # noqa: S108
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


class SandboxError(Exception):
    """The Docker sandbox cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Sandbox:
    """What the worker runs assignments in: `docker` (IMAGE) or `none` (a forked child), and why."""

    mode: str
    image: str | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.mode == "docker":
            return f"docker ({self.image})"
        return f"none (forked child, unsandboxed: {self.reason})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpus: float
    pids: int = PIDS_LIMIT


@dataclass(frozen=True)
class Outcome:
    """How a container ended: its exit code, whether it was killed at its time limit or for memory, and its log."""

    code: int
    timed_out: bool
    oom_killed: bool
    seconds: float
    log: bytes


def sdk(module: str = "") -> Any:
    """The Docker SDK (`docker`, or its submodule MODULE: errors, types). Imported by name because the repository's
    own docker/ folder (images, compose) shadows the SDK for mypy; SandboxError when it is not installed."""
    try:
        return importlib.import_module(f"docker.{module}" if module else "docker")
    except ImportError:
        raise SandboxError("the Python package `docker` is not installed (pip install 'docker>=7.1')") from None


def client(timeout: float = 30) -> Any:
    """A client of the engine DOCKER_HOST names (else the local socket); DockerException when none answers."""
    engine = sdk().from_env(timeout=timeout)
    engine.ping()
    return engine


def check(image: str) -> str | None:
    """None when the Docker sandbox can run IMAGE here, else why not (one line, with what to do)."""
    try:
        errors = sdk("errors")
    except SandboxError as exc:
        return str(exc)
    try:
        engine = client(timeout=5)
    except errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return f"no Docker engine answers at {where} ({_first_line(exc)}); start Docker or give this user access to it"
    try:
        engine.images.get(image)
    except errors.ImageNotFound:
        return f"the image {image} is not on this machine; build it (make images) or pass --sandbox-image"
    except errors.DockerException as exc:
        return f"the Docker engine cannot look up {image} ({_first_line(exc)})"
    finally:
        engine.close()
    return None


def selftest(image: str, state: Path) -> str | None:
    """Run one tiny container the way assignments run: None when it reads what the agent wrote into a workdir under
    STATE, else why not. It fails where the engine sees other paths than the agent (an agent in a container whose
    state folder is not mounted at the same path on the host), or cannot start the image."""
    token = os.urandom(8).hex()
    (state / "work").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="selftest-", dir=state / "work"))
    try:
        (workdir / "payload.json").write_text(token)
        outcome = run(
            image=image, name=f"hashwork-{workdir.name}", workdir=workdir, node_id="selftest",
            command=["python", "-c", "import sys; sys.stdout.write(open('payload.json').read())"],
            limits=Limits(memory_mb=MIN_MEMORY_MB, cpus=1.0), time_limit=60,
        )  # fmt: skip
    except SandboxError as exc:
        return f"a test container of {image} did not run ({exc})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.code == 0 and outcome.log.decode(errors="replace").strip().endswith(token):
        return None
    return (
        f"a test container of {image} could not read its workdir {workdir} (exit code {outcome.code}); if this agent "
        "runs in a container itself, mount its state folder at the same path on the host"
    )


def choose(requested: str, image: str, *, state: Path | None = None) -> Sandbox:
    """The sandbox for `--sandbox REQUESTED`: auto takes Docker when it works, else a forked child; docker refuses
    to go on without it (SandboxError); none forks, unsandboxed. With STATE, Docker also has to pass selftest()."""
    if requested not in CHOICES:
        raise SandboxError(f"--sandbox {requested!r}: use one of {', '.join(CHOICES)}")
    if requested == "none":
        return Sandbox("none", reason="--sandbox none")
    problem = check(image)
    if problem is None and state is not None:
        problem = selftest(image, state)
    if problem is None:
        return Sandbox("docker", image)
    if requested == "docker":
        raise SandboxError(
            f"--sandbox docker: {problem}. Fix that, or run with --sandbox auto to fall back to an unsandboxed "
            "forked child (the runner then sees this user's files, the agent's config and the network)."
        )
    return Sandbox("none", reason=problem)


def state_write(state: Path, sandbox: Sandbox) -> None:
    """Record what the worker runs assignments in, for `nodeagent status` (atomically)."""
    path = state / STATE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(sandbox.to_json()))
    tmp.replace(path)


def state_read(state: Path) -> Sandbox | None:
    try:
        raw = json.loads((state / STATE_FILE).read_text())
        return Sandbox(str(raw["mode"]), raw.get("image"), str(raw.get("reason", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def limits_for(*, slots: int, cpu_cores: int, ram_mb: int) -> Limits:
    """Each slot's share of the machine: (RAM - HEADROOM_MB) / slots (at least MIN_MEMORY_MB), cores / slots CPUs
    (at least one)."""
    memory = max(MIN_MEMORY_MB, (ram_mb - HEADROOM_MB) // max(1, slots))
    return Limits(memory_mb=memory, cpus=max(1.0, cpu_cores / max(1, slots)))


def container_user() -> str:
    """`task` when the agent is root (it chowns the workdir to it); else the agent's own uid, since a normal user
    cannot give files to another, and must be able to read and remove what the task wrote."""
    return f"{TASK_UID}:{TASK_UID}" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def child_command(kind: str, workdir: PurePosixPath) -> list[str]:
    """The runner's command in the container: nodeagent.child's foreground entry."""
    return ["python", "-m", "nodeagent.child", kind, str(workdir / "payload.json"), str(workdir)]


def workdir_in_container(workdir: Path) -> PurePosixPath:
    return ROOT / "work" / workdir.name


def run(
    *,
    image: str,
    name: str,
    workdir: Path,
    command: list[str],
    limits: Limits,
    time_limit: float,
    node_id: str,
    train_dir: tuple[Path, str] | None = None,
    gpus: int = 0,
    on_start: Any = None,
) -> Outcome:
    """Run COMMAND in a new container NAME and wait for it (at most TIME_LIMIT seconds, then it is killed); the
    container is removed afterwards. WORKDIR/inputs and WORKDIR/payload.json, when present, are mounted read-only.
    TRAIN_DIR is (host folder, job id) of a train job's residuals. ON_START(name) is called once it runs.
    SandboxError when the engine fails (it cannot make or start the container)."""
    with _engine_errors():
        from requests.exceptions import RequestException

        errors, types = sdk("errors"), sdk("types")
        mount, gone = types.Mount, (errors.NotFound, errors.APIError)

        inside = workdir_in_container(workdir)
        (workdir / "inputs").mkdir(exist_ok=True)
        mounts = [
            mount(str(inside), str(workdir), type="bind"),
            mount(str(inside / "inputs"), str(workdir / "inputs"), type="bind", read_only=True),
        ]
        if (workdir / "payload.json").exists():
            payload = str(workdir / "payload.json")
            mounts.append(mount(str(inside / "payload.json"), payload, type="bind", read_only=True))
        writable = [workdir]
        if train_dir is not None:
            host, job_id = train_dir
            if not _JOB_ID.match(job_id):
                raise SandboxError(f"job id {job_id!r} is not a plain id: refusing to mount a folder named after it")
            host.mkdir(parents=True, exist_ok=True)
            mounts.append(mount(str(ROOT / "train" / job_id), str(host), type="bind"))
            writable.append(host)
        if os.geteuid() == 0:
            for folder in writable:
                os.chown(folder, TASK_UID, TASK_UID)
        engine = client(timeout=60)
        tmpfs_mb = max(64, min(1024, limits.memory_mb // 4))
        container = engine.containers.create(
            image,
            # The command replaces the image's entrypoint (the agent's: enrol, then `nodeagent run`).
            entrypoint=command,
            name=name,
            user=container_user(),
            working_dir=str(inside),
            # No secrets here: the image's own environment (PATH, PYTHONPATH) and a HOME the task can write (tmpfs).
            environment={"HOME": TASK_TMP, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
            network_mode="none",
            read_only=True,
            tmpfs={TASK_TMP: f"rw,nosuid,nodev,size={tmpfs_mb}m"},
            mounts=mounts,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.pids,
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            nano_cpus=int(limits.cpus * 1e9),
            init=True,
            labels={LABEL: node_id},
            log_config=types.LogConfig(type="json-file", config={"max-size": "8m", "max-file": "1"}),
            device_requests=[types.DeviceRequest(count=gpus, capabilities=[["gpu"]])] if gpus else None,
            detach=True,
        )
        started = time.monotonic()
        timed_out = False
        try:
            container.start()
            if on_start is not None:
                on_start(container.name)
            try:
                status = container.wait(timeout=time_limit)
            except RequestException:
                timed_out = True
                with contextlib.suppress(*gone):
                    container.kill()
                status = container.wait(timeout=30)
            seconds = time.monotonic() - started
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            log = container.logs(stdout=True, stderr=True, tail=2000)[-LOG_TAIL_BYTES:]
            return Outcome(int(status.get("StatusCode", -1)), timed_out, oom, seconds, log)
        finally:
            with contextlib.suppress(*gone):
                container.remove(force=True)
            engine.close()


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The Docker SDK's own failures (the engine cannot make or start a container) as a SandboxError."""
    errors = sdk("errors")
    try:
        yield
    except errors.DockerException as exc:
        raise SandboxError(f"the Docker engine failed: {_first_line(exc)}") from exc


def describe_failure(outcome: Outcome, *, kind: str, limit: float, limits: Limits) -> str | None:
    """None when the container succeeded, else how it ended, in the words the forked child's failures use."""
    if outcome.code == 0 and not outcome.timed_out:
        return None
    if outcome.timed_out:
        return f"ran past the {kind} time limit of {limit:.0f}s and was killed"
    if outcome.oom_killed:
        return f"ran out of its sandbox's memory limit of {limits.memory_mb} MiB and was killed"
    if outcome.code > 128 and outcome.code - 128 in {s.value for s in signal.Signals}:
        return f"was killed by signal {outcome.code - 128}"
    text = outcome.log.decode(errors="replace")
    if "Resource temporarily unavailable" in text and ("fork" in text or "thread" in text):
        return f"exited with code {outcome.code} (it hit the sandbox's limit of {limits.pids} processes)"
    return f"exited with code {outcome.code}"


def kill(name: str) -> bool:
    """Kill the container NAME (the agent stops a revoked assignment); False when it is gone already."""
    try:
        errors = sdk("errors")
    except SandboxError:
        return False
    try:
        engine = client(timeout=10)
    except errors.DockerException as exc:
        logger.warning("cannot kill container %s: %s", name, exc)
        return False
    try:
        engine.containers.get(name).kill()
        return True
    except (errors.NotFound, errors.APIError):
        return False
    finally:
        engine.close()


def remove_all(node_id: str) -> int:
    """Remove every container of this node's assignments (what a stopped or crashed worker left running)."""
    try:
        errors = sdk("errors")
    except SandboxError:
        return 0
    try:
        engine = client(timeout=10)
    except errors.DockerException as exc:
        logger.warning("cannot remove this node's containers: %s", exc)
        return 0
    removed = 0
    try:
        for container in engine.containers.list(all=True, filters={"label": f"{LABEL}={node_id}"}):
            with contextlib.suppress(errors.NotFound, errors.APIError):
                container.remove(force=True)
                removed += 1
    finally:
        engine.close()
    return removed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
