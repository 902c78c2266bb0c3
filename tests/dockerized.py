"""Tests that need a Docker engine and Hashwork's images (`make images`).

A machine that cannot run Docker fails these tests with what to do, unless HASHWORK_NO_DOCKER=1 says explicitly
that it has none: then they are skipped, and the skip reason says why. `make test` starts the engine and builds
the images first (`make docker-engine images`), so on a machine with Debian's docker.io they always run.
"""

from __future__ import annotations

import os

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

NO_DOCKER = os.environ.get("HASHWORK_NO_DOCKER") == "1"


def docker_client() -> docker.DockerClient:
    """A client of the machine's engine, or a skip (HASHWORK_NO_DOCKER=1) or a failure saying what to do."""
    if NO_DOCKER:
        pytest.skip("HASHWORK_NO_DOCKER=1: this machine says it has no Docker engine")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        pytest.fail(
            f"No Docker engine answers ({exc}). Start one with `make docker-engine` (root on Debian), or set "
            "HASHWORK_NO_DOCKER=1 to skip the container tests on a machine that cannot run Docker."
        )
    return client


def image(name: str) -> str:
    """`hashwork/NAME:local`, after checking it was built."""
    tag = f"hashwork/{name}:local"
    client = docker_client()
    try:
        client.images.get(tag)
    except ImageNotFound:
        pytest.fail(f"The image {tag} is missing: run `make images` first.")
    return tag
