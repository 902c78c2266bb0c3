"""An agent killed with SIGKILL and started again hands back what its dead run held: released at once, not left
to expire against the node (two expiries block a node from a job, and with few operators the job then waits for
one that never comes: found by tests/faults/test_process_kills.py[agent])."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Long leases: an expiry could not happen within the test, so only the restart's hand-back frees the work.
    running = Stack(tmp_path, HASHWORK_LEASE_SECONDS="600", HASHWORK_START_WINDOW_SECONDS="600").start()
    try:
        yield running
    finally:
        running.stop()


def test_a_restarted_agent_hands_back_its_dead_runs_work_and_no_expiry_counts_against_it(stack: Stack) -> None:
    rig = stack.agent("crashy", slots=2)
    job_id = stack.post_job({"tasks": 4, "matrix_size": 1400, "seed": 5}, replication=1)
    wait_for(lambda: any(a["state"] == "running" for a in rig.assignments()), timeout=60, what="a running task")
    held = {a["id"] for a in rig.assignments() if a["state"] in ("leased", "running")}
    rig.signal_group(signal.SIGKILL)
    assert rig.process is not None
    rig.process.wait(timeout=10)
    rig.start()

    def handed_back() -> bool:
        states = {a["id"]: a["state"] for a in rig.assignments()}
        return all(states.get(a) in ("released", "submitted", "accepted") for a in held)

    wait_for(handed_back, timeout=60, what="the dead run's assignments handed back")
    job = stack.wait_job(job_id, timeout=180)
    assert job["tasks"] == {"completed": 4}
    me = rig.me()
    assert me["expired_count"] == 0
    assert me["valid_count"] == 4
    assert any(a["state"] == "released" for a in rig.assignments() if a["id"] in held)
