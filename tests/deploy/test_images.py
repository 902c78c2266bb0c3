"""The images as built by `make images` (make test builds them first): labels, users, health checks, what is in
them and what is not, and that an unchanged input rebuilds nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.deploy.helpers import REPO
from tests.dockerized import docker_client, image

NAMES = ["base", "marketplace", "nodeagent", "anvil", "postgres", "redis"]


def run_in(name: str, command: list[str], **kwargs: object) -> str:
    """What `command` prints in a throwaway container of hashwork/NAME (no network)."""
    out = docker_client().containers.run(
        image(name), command, entrypoint=[], network_mode="none", remove=True, stderr=True, **kwargs
    )
    return out.decode() if isinstance(out, bytes) else str(out)


@pytest.mark.parametrize("name", NAMES)
def test_each_image_carries_its_revision_and_inputs_and_runs_as_a_user_that_is_not_root(name: str) -> None:
    built = docker_client().images.get(image(name))
    labels = built.labels
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    revision = labels["org.opencontainers.image.revision"]
    assert revision != "unknown"
    # Built at some commit of this repository (an image is reused while its inputs are unchanged).
    known = subprocess.run(["git", "cat-file", "-e", revision.removesuffix("-dirty")], cwd=REPO, capture_output=True)
    assert known.returncode == 0 or revision.startswith(head), revision
    assert len(labels["io.hashwork.inputs"]) == 32
    user = built.attrs["Config"]["User"]
    assert user
    assert user.split(":")[0] not in {"root", "0"}
    if name != "base":
        assert built.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"


def test_no_secret_and_nothing_local_is_in_the_marketplace_image() -> None:
    names = set(run_in("marketplace", ["ls", "-a", "/app"]).split())
    assert {"manage.py", "marketplace", "contracts", "nodeagent"} <= names
    assert not names & {".git", ".venv", "node_modules", "var", "tests", ".env"}
    # Of what docker/images.py stages (wheels, Anvil's binary), only the requirements list is in the context.
    assert run_in("marketplace", ["ls", "-a", "/app/docker/stage"]).split() == [".", "..", "requirements.txt"]
    env = docker_client().images.get(image("marketplace")).attrs["Config"]["Env"]
    assert not [e for e in env if any(word in e.split("=")[0] for word in ("KEY", "SECRET", "PASSWORD", "TOKEN"))]


def test_the_python_images_have_torchs_cpu_build_bpy_and_the_pinned_versions() -> None:
    script = (
        "import bpy, django, torch; from importlib.metadata import version; "
        "print(torch.__version__, torch.version.cuda, bpy.app.version_string, django.__version__, version('celery'))"
    )
    for name in ("marketplace", "nodeagent"):
        torch_version, cuda, blender, django, celery = run_in(name, ["python", "-c", script]).split()[-5:]
        assert torch_version.startswith("2.13.0")
        assert cuda == "None"
        assert blender.startswith("5.0.1")
        pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
        assert (django, celery) == (pins["Django"], pins["celery"])


def test_the_node_agent_image_runs_the_agent_and_has_the_unprivileged_task_user() -> None:
    assert "usage: nodeagent" in run_in("nodeagent", ["nodeagent", "--help"])
    assert run_in("nodeagent", ["id", "-u", "task"]).strip() == "10002"
    # The task user owns nothing of the agent's: its state directory belongs to the agent's own user.
    assert run_in("nodeagent", ["stat", "-c", "%U", "/var/lib/nodeagent"]).strip() == "hashwork"


def test_the_chain_image_runs_the_pinned_anvil() -> None:
    assert run_in("anvil", ["anvil", "--version"]).startswith("anvil Version")


def test_building_again_with_unchanged_inputs_rebuilds_nothing() -> None:
    docker_client()
    done = subprocess.run([sys.executable, "docker/images.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in NAMES:
        assert f"hashwork/{name}:local: up to date" in done.stdout, done.stdout
    assert "building" not in done.stdout
