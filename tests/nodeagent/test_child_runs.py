"""Assignments run in a forked child: success writes the artifact, a crash or a time-out is reported, never
raised into the worker. The runners here are registered for the test; the fork inherits the registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent import runners, worker
from tests.nodeagent.test_agent_cli import _config
from tests.protocol.messages import an_assignment


def _crash(payload: dict[str, Any], workdir: Path) -> dict[str, Any]:
    raise RuntimeError("GPU fell off the bus")


def _hang(payload: dict[str, Any], workdir: Path) -> dict[str, Any]:
    # A runner that hangs: the worker's time limit (1 s in the test) must kill it long before this ends.
    time.sleep(60)
    return {}


def _own_artifact(payload: dict[str, Any], workdir: Path) -> dict[str, Any]:
    (workdir / "artifact").write_bytes(b"\x89PNG rendered")
    return {"images": 1, "cwd": os.getcwd()}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setitem(runners.RUNNERS, "test-crash", _crash)
    monkeypatch.setitem(runners.RUNNERS, "test-hang", _hang)
    monkeypatch.setitem(runners.RUNNERS, "test-artifact", _own_artifact)
    cfg = _config(tmp_path)

    def go(kind: str, payload: dict[str, Any], **message: Any) -> tuple[str | None, Path]:
        workdir = tmp_path / f"work-{kind}"
        workdir.mkdir()
        assignment = an_assignment(kind=kind, payload=payload, **message)
        outcome = worker._run_child(cfg, assignment, workdir, tmp_path / f"{kind}.marker")
        return outcome, workdir

    return go


def test_a_successful_benchmark_run_leaves_its_metrics_as_the_artifact(run: Any) -> None:
    outcome, workdir = run("benchmark", {"matrix_size": 16, "seed": 1, "index": 0})
    assert outcome is None
    artifact = json.loads((workdir / "artifact").read_text())
    assert artifact == json.loads((workdir / "metrics.json").read_text())
    assert artifact["checksum"] == runners.benchmark.run({"matrix_size": 16, "seed": 1, "index": 0})["checksum"]


def test_a_runner_may_write_its_own_artifact_in_its_private_directory(run: Any) -> None:
    outcome, workdir = run("test-artifact", {})
    assert outcome is None
    assert (workdir / "artifact").read_bytes() == b"\x89PNG rendered"
    assert json.loads((workdir / "metrics.json").read_text())["cwd"] == str(workdir)


def test_a_crashing_runner_is_reported_with_its_traceback(run: Any) -> None:
    outcome, workdir = run("test-crash", {})
    assert outcome is not None
    assert "exited with code 1" in outcome
    assert "GPU fell off the bus" in outcome
    assert not (workdir / "artifact").exists()


def test_a_runner_past_its_time_limit_is_killed(run: Any) -> None:
    started = time.monotonic()
    outcome, _ = run("test-hang", {}, time_limit_seconds=1)
    assert time.monotonic() - started < 30
    assert outcome is not None
    assert "time limit of 1s" in outcome


def test_an_unknown_kind_is_a_failure_that_says_to_upgrade(run: Any) -> None:
    outcome, _ = run("render-v9", {})
    assert outcome is not None
    assert "upgrade nodeagent" in outcome
