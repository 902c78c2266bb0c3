"""Counting the sandbox containers a test's agents start (tests/e2e/test_train.py runs its agents in the Docker
sandbox; the rest of the suite's agents fork, tests/conftest.py)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from nodeagent import sandbox
from tests.dockerized import docker_client

SANDBOXED = {"NODEAGENT_SANDBOX": "docker"}


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
        events.close()


def containers_left(node_id: str) -> list[object]:
    """The sandbox containers of `node_id` that still exist (none once its assignments ended)."""
    return list(docker_client().containers.list(all=True, filters={"label": f"{sandbox.LABEL}={node_id}"}))
