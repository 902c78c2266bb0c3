"""Runs one assignment in a child process: `python -m nodeagent.child KIND PAYLOAD_FILE WORKDIR`.

Writes WORKDIR/artifact (unless the runner wrote one, the runner's metrics as canonical JSON) and
WORKDIR/metrics.json; exits non-zero on any failure, with the error on stderr.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from nodeagent.runners import get


def main(argv: list[str]) -> int:
    # Ctrl-C in the agent's terminal reaches the whole process group; the agent decides what happens to
    # running work (hand it back), so the runner ignores SIGINT and ends with its parent instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 3:
        sys.stderr.write("usage: python -m nodeagent.child KIND PAYLOAD_FILE WORKDIR\n")
        return 2
    kind, payload_file, workdir = argv[0], Path(argv[1]), Path(argv[2])
    payload = json.loads(payload_file.read_text())
    metrics = get(kind)(payload, workdir)
    encoded = json.dumps(metrics, sort_keys=True, separators=(",", ":"))
    artifact = workdir / "artifact"
    if not artifact.exists():
        artifact.write_text(encoded)
    (workdir / "metrics.json").write_text(encoded)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
