"""One process at a time for a directory's state: an flock held for the holder's lifetime, with its pid in the file.

The kernel releases an flock when its holder's process ends, however it ends (kill -9 included), so a lock file
left behind by a dead process locks nothing: the next one takes it and writes its own pid. The file descriptor is
not inherited by child processes (Python opens files non-inheritable), so the children of a killed holder do not
keep its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path


class LockHeld(Exception):
    """Another live process holds the lock; `pid` is the one it wrote (None if it has not written it yet)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        super().__init__(f"{path} is held by process {pid if pid is not None else '(pid not written yet)'}")


@dataclass
class PidLock:
    """A held lock; release() (or the end of the process) frees it."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the only descriptor releases the flock
        self.fd = None

    def __enter__(self) -> PidLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def pid_lock(path: Path) -> PidLock:
    """Take the lock at `path` without waiting and write this process's pid in it; LockHeld (naming the holder's
    pid) when a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder_pid(fd)
        os.close(fd)
        raise LockHeld(path, pid) from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return PidLock(path, fd)
