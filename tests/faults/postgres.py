"""A PostgreSQL server of a test's own (initdb into a temporary folder, on a free port), so that a fault test can
kill -9 it and start it again without touching the machine's shared server."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from marketplace.core.ports import free_port


def _binary(name: str) -> str:
    """initdb/postgres: Debian keeps them under /usr/lib/postgresql/<major>/bin (newest major first)."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL's server package (Debian: postgresql)")
    return found


class PrivatePostgres:
    """One PostgreSQL cluster: `start()`, `kill()` (SIGKILL of the postmaster: its backends exit and the next start
    runs crash recovery from the WAL), `stop()`. As root it runs as the `postgres` user, which PostgreSQL requires."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hw-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self._as, _binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
             "-E", "UTF8", "--locale", "C"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/hashwork"

    def start(self, timeout: float = 30) -> None:
        log = (self.directory / "postgres.log").open("ab")
        # fsync off: the faults here kill processes, not the machine, so what was written stays in the page cache.
        self.process = subprocess.Popen(
            [*self._as, _binary("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres") as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; see {self.directory / 'postgres.log'}") from None
                time.sleep(0.1)
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'hashwork'").fetchone():
                conn.execute("CREATE DATABASE hashwork")

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster and wait until its backends are gone too (they exit when it dies)."""
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        # Backends notice the postmaster's death within a moment; a new postmaster refuses to start while the old
        # shared memory is still attached.
        while time.monotonic() < deadline:
            alive = subprocess.run(["pgrep", "-f", f"postgres.*-D {self.data}"], capture_output=True).returncode == 0
            busy = subprocess.run(["pgrep", "-u", "postgres", "-f", "postgres: "], capture_output=True)
            if not alive and not self._attached_backends(busy.stdout):
                return
            time.sleep(0.1)

    def _attached_backends(self, pids: bytes) -> bool:
        """Whether any backend of this cluster still runs (they inherit its data folder as their cwd)."""
        for raw in pids.split():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{int(raw)}/cwd") == str(self.data):
                    return True
        return False

    def stop(self) -> None:
        pid = self._postmaster_pid()
        if self.process is not None and self.process.poll() is None and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown (the postmaster, not runuser in front of it)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
