"""How a runner reports progress: it writes WORKDIR/progress.json ({"done": d, "total": t}, atomically); the
agent reads it on each heartbeat and sends it to the marketplace, which shows it on the task and the job."""

from __future__ import annotations

import json
import os
from pathlib import Path

FILENAME = "progress.json"


def report(workdir: Path, done: int, total: int) -> None:
    """Record that `done` of `total` units (images, steps) are finished."""
    if total < 1 or not 0 <= done <= total:
        raise ValueError(f"progress needs 0 <= done <= total and total >= 1, got {done}/{total}")
    tmp = workdir / f".{FILENAME}.tmp"
    tmp.write_text(json.dumps({"done": done, "total": total}))
    os.replace(tmp, workdir / FILENAME)


def read(workdir: Path) -> tuple[int, int] | None:
    """The last progress a runner reported in `workdir`, or None (none yet, or unreadable)."""
    try:
        value = json.loads((workdir / FILENAME).read_text())
        done, total = int(value["done"]), int(value["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (done, total) if total >= 1 and 0 <= done <= total else None
