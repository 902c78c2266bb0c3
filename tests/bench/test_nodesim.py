"""Smoke test of the node simulator (bench/nodesim.py): a small fleet finishes a benchmark job through a real stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.nodesim import Fleet, behaviours_draw
from nodeagent.runners import benchmark
from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow


def test_behaviours_are_drawn_by_fraction() -> None:
    drawn = behaviours_draw(20, fail=0.1, vanish=0.05, wrong=0.0, seed=1)
    assert (drawn.count("failing"), drawn.count("vanishing"), drawn.count("honest")) == (2, 1, 17)
    assert drawn == behaviours_draw(20, fail=0.1, vanish=0.05, wrong=0.0, seed=1)


def test_three_simulated_nodes_finish_a_job(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        spec = {"tasks": 20, "matrix_size": 8, "seed": 3}
        with Fleet(stack.url, [stack.operator_token], nodes=3, slots=1, heartbeat_seconds=1) as fleet:
            job_id = stack.post_job(spec, replication=1)
            stack.wait_job(job_id, timeout=120)
        results = stack.results(job_id)
        accepted = {r["task_index"]: r for r in results if r["state"] == "accepted"}
        assert sorted(accepted) == list(range(20)), results
        assert all(r["state"] == "accepted" for r in results), results
        expected = str(benchmark.run({"matrix_size": 8, "seed": 3, "index": 7})["checksum"])
        assert f'"checksum":"{expected}"' in stack.artifact(accepted[7]).decode()
        assert fleet.counters.submitted >= 20
        assert fleet.counters.errors == 0
    finally:
        stack.stop()
