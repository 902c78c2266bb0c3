"""A small supervisor for the processes a local install runs (web server, workers): start with logs under
var/logs/, notice when one dies, stop them all in reverse order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: on Linux, have the kernel send SIGTERM to the child if its parent dies (even by kill -9),
    so a crashed demo leaves no web server, worker or Redis behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildDied(RuntimeError):
    """A supervised process exited while it should have been running."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        process = self._spawn(argv, env, log)
        child = Child(name=name, process=process, log_path=log_path, log=log, argv=list(argv), env=dict(env))
        self.children.append(child)
        return child

    @staticmethod
    def _spawn(argv: Sequence[str], env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        # Own session: Ctrl-C reaches only the supervisor, which then stops the children in order.
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def child(self, name: str) -> Child:
        """The supervised process called `name` (KeyError if there is none)."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def kill(self, name: str, timeout: float = 10.0) -> None:
        """SIGKILL `name` and everything it started (its process group), as a crash or the OOM killer would;
        returns once it is gone."""
        child = self.child(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait(timeout=timeout)

    def restart(self, name: str) -> Child:
        """Start `name` again with its command line and environment, as systemd's `Restart=always` or Compose's
        `restart: unless-stopped` would after a crash (it must have exited)."""
        child = self.child(name)
        if child.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {child.process.pid}): kill it first")
        child.process = self._spawn(child.argv, child.env, child.log)
        return child

    def check(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ChildDied(
                    f"The {child.name} process exited with code {code}. Last lines of {child.log_path}:\n"
                    f"{child.log_tail()}"
                )

    def stop_all(self, timeout: float = 20.0) -> list[tuple[str, int | None]]:
        """Stop the children one by one, newest first, so each can still reach what it depends on (agents
        hand their work back to a web server that is still up); SIGKILL what ignores SIGTERM for `timeout`."""
        outcome: list[tuple[str, int | None]] = []
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
                try:
                    child.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.process.pid, signal.SIGKILL)
                    child.process.wait()
            outcome.append((child.name, child.process.returncode))
            child.log.close()
        self.children.clear()
        return outcome
