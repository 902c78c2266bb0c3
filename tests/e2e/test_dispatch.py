"""End to end, with real processes: the web server, a marketplace worker, beat and `nodeagent run` agents
talking over real HTTP and the real Redis (each agent inside its own ACL-confined key prefix)."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.runners import benchmark
from tests.e2e.stack import Stack
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    overrides = getattr(request, "param", {})
    running = Stack(tmp_path, **overrides).start()
    try:
        yield running
    finally:
        running.stop()


def _expected_checksum(spec: dict[str, int], index: int) -> str:
    payload = {"matrix_size": spec["matrix_size"], "seed": spec["seed"], "index": index}
    return str(benchmark.run(payload)["checksum"])


def _accepted_by_task(stack: Stack, job_id: str) -> dict[int, list[dict[str, object]]]:
    accepted: dict[int, list[dict[str, object]]] = defaultdict(list)
    for result in stack.results(job_id):
        if result["state"] == "accepted":
            accepted[int(result["task_index"])].append(result)
    return accepted


def test_a_replicated_job_completes_on_two_agents_with_replicas_on_different_nodes(stack: Stack) -> None:
    a, b = stack.agent("rig-a"), stack.agent("rig-b")
    spec = {"tasks": 20, "matrix_size": 48, "seed": 11}
    job_id = stack.post_job(spec, replication=2)
    job = stack.wait_job(job_id)
    assert job["tasks"] == {"completed": 20}
    accepted = _accepted_by_task(stack, job_id)
    assert sorted(accepted) == list(range(20))
    for index, replicas in accepted.items():
        assert len(replicas) == 2
        assert {r["node"] for r in replicas} == {a.node_id, b.node_id}
        for replica in replicas:
            artifact = json.loads(stack.artifact(replica))
            assert artifact["checksum"] == _expected_checksum(spec, index)
    assert a.me()["valid_count"] == 20
    assert b.me()["valid_count"] == 20
    status = stack.nodeagent("rig-a", "status", env=a.env)
    assert status.returncode == 0, status.stderr
    assert "online: yes" in status.stdout
    assert "accepted 20, rejected 0, expired 0" in status.stdout


def test_killing_an_agent_mid_task_loses_no_task_and_pays_no_replica_twice(stack: Stack) -> None:
    victim, survivor = stack.agent("doomed"), stack.agent("survivor")
    spec = {"tasks": 10, "matrix_size": 1400, "seed": 3}
    job_id = stack.post_job(spec, replication=1)

    def victim_running() -> bool:
        return any(x["state"] == "running" for x in victim.assignments())

    wait_for(victim_running, timeout=60, what="the victim to be running an assignment")
    victim.signal_group(signal.SIGKILL)
    stack.wait_job(job_id)
    accepted = _accepted_by_task(stack, job_id)
    assert sorted(accepted) == list(range(10))
    assert all(len(replicas) == 1 for replicas in accepted.values())
    for index, (replica,) in accepted.items():
        assert json.loads(stack.artifact(replica))["checksum"] == _expected_checksum(spec, index)
    victim_states = {x["state"] for x in victim.assignments()}
    assert "expired" in victim_states
    assert victim_states <= {"expired", "accepted"}
    assert survivor.me()["valid_count"] >= 1


@pytest.mark.parametrize("stack", [{"HASHWORK_LEASE_SECONDS": "120", "NODE_ONLINE_SECONDS": "60"}], indirect=True)
def test_sigterm_hands_running_work_back_at_once(stack: Stack) -> None:
    leaving = stack.agent("leaving")
    stack.agent("staying")
    # Large enough that a task runs for seconds: the signal lands while one is running, not between two.
    spec = {"tasks": 4, "matrix_size": 3000, "seed": 5}
    job_id = stack.post_job(spec, replication=1)

    def leaving_running() -> list[str]:
        return [x["id"] for x in leaving.assignments() if x["state"] == "running"]

    wait_for(lambda: bool(leaving_running()), timeout=60, what="the leaving agent to run an assignment")
    held = leaving_running()
    signalled = time.monotonic()
    assert leaving.process is not None
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(timeout=30) == 0
    states = {x["id"]: x["state"] for x in leaving.assignments()}
    # Handed back, not left to expire: the lease is 120 s and the agent stopped well before.
    assert time.monotonic() - signalled < 30
    assert all(states[a] in {"released", "accepted"} for a in held), states
    assert "released" in states.values()
    stack.wait_job(job_id)
    assert leaving.me()["expired_count"] == 0
    assert len(_accepted_by_task(stack, job_id)) == 4


def test_a_lying_agent_is_outvoted_loses_reputation_and_the_job_is_still_right(stack: Stack, tmp_path: Path) -> None:
    # The liar runs modified agent code, as a cheating volunteer would: its benchmark runner reports a
    # made-up checksum. Python loads sitecustomize from PYTHONPATH in the agent and in every child it starts.
    patch = tmp_path / "liar"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import nodeagent.runners as runners\n"
        "_honest = runners.RUNNERS['benchmark']\n"
        "def _lie(payload, workdir=None):\n"
        "    metrics = _honest(payload, workdir)\n"
        "    metrics['checksum'] = '0' * 64\n"
        "    return metrics\n"
        "runners.RUNNERS['benchmark'] = _lie\n"
    )
    liar = stack.agent("liar", extra_env={"PYTHONPATH": str(patch)})
    honest = [stack.agent("honest-1"), stack.agent("honest-2")]
    spec = {"tasks": 9, "matrix_size": 48, "seed": 99}
    job_id = stack.post_job(spec, replication=2)
    stack.wait_job(job_id)
    accepted = _accepted_by_task(stack, job_id)
    assert sorted(accepted) == list(range(9))
    for index, replicas in accepted.items():
        assert len(replicas) >= 2
        assert all(r["node"] != liar.node_id for r in replicas)
        for replica in replicas:
            assert json.loads(stack.artifact(replica))["checksum"] == _expected_checksum(spec, index)
    liar_node = liar.me()
    assert liar_node["invalid_count"] >= 1
    assert liar_node["valid_count"] == 0
    assert {x["state"] for x in liar.assignments()} <= {"rejected", "expired", "released"}
    assert sum(h.me()["valid_count"] for h in honest) == sum(len(r) for r in accepted.values())
