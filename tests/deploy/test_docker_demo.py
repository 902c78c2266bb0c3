"""`make docker-demo` (docker/stack.py demo) end to end: every service a container from the local images, the demo's
render job verified, paid on chain and refunded, and nothing of the stack left afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.core import dockerstack
from tests.deploy.helpers import DOCKER, REPO
from tests.dockerized import docker_client, image

pytestmark = pytest.mark.slow

STACK = DOCKER / "stack.py"
SERVICES = ("postgres", "redis", "anvil", "migrate", "deploy", "web", "worker", "replay", "settlement", "beat")
SERVICES += ("flower",)
SUMMARY = re.compile(
    r"^Summary: (\d+) images rendered, ([\d.,]+) HWC paid to the nodes, ([\d.,]+) HWC refunded to the poster\.$", re.M
)


def stack(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK), *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def free_port_base() -> int:
    """A base whose five ports are free on 127.0.0.1 (not the default 17000, which a developer's stack may hold)."""
    for base in range(17100, 17900, 10):
        try:
            for offset in dockerstack.PORT_OFFSETS.values():
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    pytest.fail("No five free ports from 17100 to 17900 on 127.0.0.1.")


@pytest.fixture
def project() -> Iterator[str]:
    """A stack name of this test's own; whatever is left of it afterwards is removed (and the test says so)."""
    name = f"hwtest-{uuid.uuid4().hex[:6]}"
    yield name
    engine = docker_client()
    for container in dockerstack.containers(engine, name):
        container.remove(force=True)
    for volume in engine.volumes.list(filters={"name": name}):
        volume.remove(force=True)


def leftovers(project: str) -> list[str]:
    engine = docker_client()
    containers = [c.name for c in dockerstack.containers(engine, project)]
    volumes = [v.name for v in engine.volumes.list(filters={"name": project})]
    return containers + volumes


@pytest.mark.timeout(600)
def test_the_docker_demo_renders_verifies_pays_refunds_and_leaves_nothing_behind(project: str, tmp_path: Path) -> None:
    for name in ("postgres", "redis", "anvil", "marketplace", "nodeagent"):
        image(name)
    summary_file = tmp_path / "docker-demo-summary.json"
    done = stack(
        "demo", "--project", project, "--port-base", str(free_port_base()), "--var-dir", str(tmp_path / "var"),
        "--summary", str(summary_file), timeout=560,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for service in SERVICES:  # one progress line per service, with its state
        assert re.search(rf"^  {service} +(healthy|ready|done) ", done.stdout, re.M), service
    found = SUMMARY.search(done.stdout)
    assert found, output[-3000:]
    assert int(found[1]) > 0
    summary = json.loads(summary_file.read_text())
    assert summary["completed"] is True
    assert summary["stack"]["train"] is False  # --no-train: the render job only
    render = summary["render"]
    assert render["state"] == "completed"
    assert render["settlement"]["paid"] > 0
    assert render["settlement"]["refunded"] > 0
    assert render["settlement"]["reconciled"] is True
    assert summary["totals"]["paid"] == render["settlement"]["paid"]
    assert len(render["replicas_per_node"]) == 2  # both agent containers did work
    # The secrets are gone with the stack; the containers' logs are kept.
    state_dir = tmp_path / "var" / project
    assert not (state_dir / dockerstack.STATE_FILE).exists()
    assert (state_dir / "logs" / "web.log").stat().st_size > 0
    assert leftovers(project) == []


def test_a_container_that_fails_ends_the_demo_with_its_last_log_lines_and_nothing_left(
    project: str, tmp_path: Path
) -> None:
    for name in ("postgres", "redis", "anvil", "marketplace", "nodeagent"):
        image(name)
    # A chain image that cannot run Anvil's command line: its container exits at once.
    done = stack(
        "demo", "--project", project, "--port-base", str(free_port_base()), "--var-dir", str(tmp_path),
        timeout=240, HASHWORK_ANVIL_IMAGE=image("redis"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stack: anvil exited with code 127. Its last log lines" in done.stdout
    assert "exec --host failed" in done.stdout
    assert "Removed the stack's" in done.stdout
    assert not (tmp_path / project / dockerstack.STATE_FILE).exists()
    assert leftovers(project) == []


@pytest.mark.timeout(300)
def test_ctrl_c_during_the_demo_removes_the_whole_stack(project: str, tmp_path: Path) -> None:
    for name in ("postgres", "redis", "anvil", "marketplace", "nodeagent"):
        image(name)
    argv = [sys.executable, str(STACK), "demo", "--project", project, "--port-base", str(free_port_base()),
            "--var-dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "Enrolled and started" in line:  # the agents' containers run, and the host-side demo with them
            process.send_signal(signal.SIGINT)
            break
    rest = process.communicate(timeout=120)[0]
    assert process.returncode == 130, "".join(seen) + rest
    assert "interrupted; everything it started was removed" in rest
    assert leftovers(project) == []


def test_down_on_a_stack_that_is_not_running_says_so_and_succeeds(project: str, tmp_path: Path) -> None:
    docker_client()
    done = stack("down", "--project", project, "--var-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"No Hashwork stack {project!r} is running" in done.stdout
    assert "nothing to stop" in done.stdout


def test_a_taken_port_is_named_before_anything_starts(project: str, tmp_path: Path) -> None:
    for name in ("postgres", "redis", "anvil", "marketplace", "nodeagent"):
        image(name)
    base = free_port_base()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", base + dockerstack.PORT_OFFSETS["web"]))
        squatter.listen()
        done = stack("demo", "--project", project, "--port-base", str(base), "--var-dir", str(tmp_path))
    assert done.returncode == 1
    assert f"Port {base + 3} (web" in done.stdout
    assert "--port-base" in done.stdout
    assert leftovers(project) == []


def test_a_bad_flag_or_value_gets_a_clear_error() -> None:
    unknown = stack("demo", "--ports", "17000")
    assert unknown.returncode == 2
    assert "unrecognized arguments: --ports" in unknown.stderr
    assert "usage: docker/stack.py demo" in unknown.stderr
    bad = stack("up", "--port-base", "eighty")
    assert bad.returncode == 2
    assert "'eighty' is not a port base: a number from 1024 to 65531" in bad.stderr
    no_command = stack()
    assert no_command.returncode == 2
    assert "up" in no_command.stderr
    assert "down" in no_command.stderr
    assert "demo" in no_command.stderr


def test_help_describes_every_command_and_the_ports() -> None:
    done = stack("--help")
    assert done.returncode == 0
    for text in ("up", "down", "demo", "(default 17000)", "var/docker/PROJECT/stack.json"):
        assert text in done.stdout
    demo = stack("demo", "--help")
    for option in ("--project", "--port-base", "--var-dir", "--timeout", "--summary"):
        assert option in demo.stdout


def manage_demo(*args: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HASHWORK_VAR_DIR": str(var_dir)}
    for name in ("DATABASE_URL", "REDIS_URL", "ETH_RPC_URL"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", "demo", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_the_demo_on_docker_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    done = manage_demo("--headless", "--stack", "docker", "--timeout", "5", var_dir=tmp_path)
    assert done.returncode == 1
    assert f"Cannot read the stack's state {tmp_path / dockerstack.STATE_FILE}" in done.stderr
    assert "docker/stack.py up" in done.stderr


def test_the_demos_new_options_refuse_what_cannot_work(tmp_path: Path) -> None:
    setup_only = manage_demo("--setup-only", var_dir=tmp_path)
    assert setup_only.returncode == 1
    assert "--setup-only needs --stack docker" in setup_only.stderr
    images = manage_demo("--images", "1", var_dir=tmp_path)
    assert images.returncode == 1
    assert "--images 1: render from 2 to 1000 images" in images.stderr
