"""Render and train jobs end to end with both agents in the Docker sandbox (`--sandbox docker`): every assignment
runs in a container of hashwork/nodeagent:local, and the results verify and aggregate as the forked child's do.

The rest of the suite's agents fork their runners (tests/conftest.py); the sandbox's defences are played one by one
in tests/nodeagent/test_sandbox.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import sandbox
from tests.dockerized import docker_client, image
from tests.e2e.stack import Stack
from tests.helpers import wait_for
from tests.marketplace.jobs.test_render_kind import render_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    image("nodeagent")  # fails with what to do when Docker or the image is missing (skips on HASHWORK_NO_DOCKER=1)
    running = Stack(tmp_path, HASHWORK_LEASE_SECONDS="300", HASHWORK_START_WINDOW_SECONDS="300").start()
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def containers_created() -> Iterator[Counter[str]]:
    """Count the sandbox containers created while the block runs, per node (the engine's own events, followed live:
    it keeps only its last 256 events)."""
    created: Counter[str] = Counter()
    events = docker_client().api.events(decode=True, filters={"type": "container", "event": "create"})

    def follow() -> None:
        with contextlib.suppress(Exception):  # the stream ends when it is closed below
            for event in events:
                node = event.get("Actor", {}).get("Attributes", {}).get(sandbox.LABEL)
                if node:
                    created[node] += 1

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield created
    finally:
        time.sleep(1)
        events.close()


def test_render_and_train_assignments_run_in_containers_and_are_verified_and_aggregated(stack: Stack) -> None:
    with containers_created() as created:
        _render_then_train(stack)
    for agent in stack.agents:
        # Each agent ran all its work in the sandbox, and says so.
        status = stack.nodeagent(agent.name, "status", env=agent.env)
        assert "sandbox: docker (hashwork/nodeagent:local)" in status.stdout, status.stdout
        ran = [x for x in agent.assignments() if x["state"] in {"submitted", "accepted"}]
        assert ran
        assert created[agent.node_id] >= len(ran)
        # And no container of theirs is left behind.
        left = docker_client().containers.list(all=True, filters={"label": f"{sandbox.LABEL}={agent.node_id}"})
        assert left == []


def _render_then_train(stack: Stack) -> None:
    sandboxed = {"NODEAGENT_SANDBOX": "docker"}
    stack.agent("boxed-a", extra_env=sandboxed), stack.agent("boxed-b", extra_env=sandboxed)
    spec = render_spec(images=8, chunk_size=8)
    render = {"kind": "render", "spec": spec, "price_per_replica": "10", "replication": 2}
    reply = stack.poster.post(f"{stack.url}/api/jobs/", json=render, timeout=10)
    assert reply.status_code == 201, reply.text
    render_id = reply.json()["id"]
    stack.manage("job", "fund-dev", render_id)
    stack.wait_job(render_id, timeout=300)
    accepted = [r for r in stack.results(render_id) if r["state"] == "accepted"]
    assert len(accepted) == 2  # 1 chunk x 2 replicas, compared exactly across the two sandboxes
    wait_for(lambda: stack.job(render_id)["output_url"] is not None, timeout=120, what="the merged dataset")

    train: dict[str, Any] = {
        "dataset": {"job": render_id}, "image_size": 24, "rounds": 1, "participants": 2, "local_steps": 10,
        "batch_size": 16, "compression": {"name": "int8"}, "round_deadline_seconds": 120,
    }  # fmt: skip
    reply = stack.poster.post(
        f"{stack.url}/api/jobs/",
        json={"kind": "train", "spec": train, "price_per_replica": "10", "replication": 1},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    train_id = reply.json()["id"]
    stack.manage("job", "fund-dev", train_id)
    assert stack.wait_job(train_id, timeout=400)["state"] == "completed"
    rounds = stack.poster.get(f"{stack.url}/api/jobs/{train_id}/rounds/", timeout=10).json()["results"]
    assert [r["metrics"]["accepted"] for r in rounds] == [2]
