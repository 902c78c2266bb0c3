"""Runners by job kind: each takes an assignment payload (JSON, read with its protocol payload class) and a
private working directory and returns the result's metrics; a runner may write its artifact to WORKDIR/artifact
(otherwise the metrics are the artifact)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeagent.runners import benchmark, render, train

Runner = Callable[[dict[str, Any], Path], dict[str, Any]]

RUNNERS: dict[str, Runner] = {"benchmark": benchmark.run, "render": render.run, "train": train.run}


def get(kind: str) -> Runner:
    try:
        return RUNNERS[kind]
    except KeyError:
        raise KeyError(f"this node agent has no runner for job kind {kind!r}; upgrade nodeagent") from None
