"""Runs one assignment in a child process, forked from the worker's pool process (which has the runners
imported already, so a child starts in milliseconds, not the ~0.3 s of a new interpreter with numpy).

The child writes WORKDIR/artifact (the runner's own, or else its metrics as canonical JSON) and
WORKDIR/metrics.json, and exits non-zero on any failure with the traceback in its log. A crash, a leak or
library state (bpy's, say) stays in the child; the parent's memory is never touched.
`python -m nodeagent.child KIND PAYLOAD_FILE WORKDIR` runs the same in the foreground: it is the command of each
sandbox container (nodeagent.sandbox), and handy for debugging.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from nodeagent.runners import get


def run(kind: str, payload_file: Path, workdir: Path) -> None:
    payload = json.loads(payload_file.read_text())
    metrics = get(kind)(payload, workdir)
    encoded = json.dumps(metrics, sort_keys=True, separators=(",", ":"))
    artifact = workdir / "artifact"
    if not artifact.exists():
        artifact.write_text(encoded)
    (workdir / "metrics.json").write_text(encoded)


def fork(kind: str, payload_file: Path, workdir: Path, log_path: Path) -> int:
    """Start the runner in a forked child; returns its pid (the caller waits for it)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # The agent decides what happens to running work on Ctrl-C (hand it back): ignore SIGINT here, and
        # die with the pool process that forked us rather than outlive it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # The parent's sys.stdout/stderr may not be these descriptors at all (Celery swaps in a logging
        # proxy): write through new file objects on them, so output and tracebacks land in the log.
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.chdir(workdir)
        run(kind, payload_file, workdir)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        # Never return into the parent's code (Celery's loop): leave at once, without its atexit handlers.
        os._exit(code)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: python -m nodeagent.child KIND PAYLOAD_FILE WORKDIR\n")
        return 2
    run(argv[0], Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
