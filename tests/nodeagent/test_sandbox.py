"""Each assignment runs in a locked-down container of the real node-agent image (hashwork/nodeagent:local): a hostile
runner cannot reach the network, see the agent's config or wallet key, write outside its workdir, fork-bomb the
machine or outlive its time limit, and each attempt ends as a failed assignment with a clear reason. The honest
benchmark gives the forked child's result. Hostile code runs as the container's command (`python -c`), which is how
the worker runs the real runner (`python -m nodeagent.child`): same container, same limits."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import agent, child, sandbox, worker
from nodeagent import config as agent_config
from tests.dockerized import docker_client, image
from tests.helpers import wait_for
from tests.nodeagent.test_agent_cli import ROOT, _config
from tests.nodeagent.test_worker_messages import _Marketplace, marketplace  # noqa: F401  (a fixture)
from tests.protocol.messages import an_assignment

NODE = f"test-sandbox-{os.getpid()}"
KEY = "0x" + "5e" * 32
LIMITS = sandbox.Limits(memory_mb=1024, cpus=1.0)


@pytest.fixture(scope="module")
def tag() -> Iterator[str]:
    name = image("nodeagent")
    yield name
    # Whatever a failed test left behind (sandbox.run removes its container itself, also on failure).
    sandbox.remove_all(NODE)
    docker_client().close()


@pytest.fixture
def cfg(tmp_path: Path, marketplace: _Marketplace) -> agent_config.AgentConfig:  # noqa: F811
    """An agent whose state dir holds its config, with a wallet key and a token, as `nodeagent enroll` writes it."""
    config = _config(tmp_path, marketplace_url=marketplace.url, wallet_key=KEY, token="hwn_secret", node_id=NODE)
    (config.state / "work").mkdir(parents=True)
    worker.running_dir(config).mkdir()
    agent_config.save(config, config.state / "nodeagent.json")
    return config


def _workdir(cfg: agent_config.AgentConfig, payload: dict[str, Any] | None = None) -> Path:
    workdir = cfg.state / "work" / f"{uuid.uuid4()}-x"
    workdir.mkdir(mode=0o700)
    (workdir / "inputs").mkdir()
    (workdir / "inputs" / "model.glb").write_text("an input")
    (workdir / "payload.json").write_text(json.dumps(payload or {"matrix_size": 16, "seed": 1, "index": 3}))
    return workdir


def _hostile(
    tag: str, cfg: agent_config.AgentConfig, code: str, *, time_limit: float = 30, limits: sandbox.Limits = LIMITS
) -> tuple[sandbox.Outcome, str | None, str]:
    """Run CODE as a task's runner; returns the outcome, the failure the marketplace would get, and the log."""
    workdir = _workdir(cfg)
    outcome = sandbox.run(
        image=tag, name=f"hw-sbx-test-{uuid.uuid4().hex[:12]}", workdir=workdir, command=["python", "-c", code],
        limits=limits, time_limit=time_limit, node_id=NODE,
    )  # fmt: skip
    return (
        outcome,
        sandbox.describe_failure(outcome, kind="benchmark", limit=time_limit, limits=limits),
        (outcome.log.decode(errors="replace")),
    )


def test_a_task_reaches_no_network_not_even_the_hosts_loopback(tag: str, cfg: agent_config.AgentConfig) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("REACHED the host")
except OSError as exc:
    print("loopback:", exc)
socket.create_connection(("1.1.1.1", 443), timeout=3)
"""
    _outcome, failure, log = _hostile(tag, cfg, code)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    assert "REACHED" not in log
    assert "loopback: [Errno 111] Connection refused" in log  # its own, empty loopback: the host's is not there
    assert "Network is unreachable" in log
    assert failure == "exited with code 1"


def test_a_task_cannot_see_the_agents_config_wallet_key_or_token(tag: str, cfg: agent_config.AgentConfig) -> None:
    config_file = cfg.state / "nodeagent.json"
    assert KEY in config_file.read_text()
    code = f"""
import os, json
seen = []
for top in ("/sandbox", "/tmp", "/var/lib/nodeagent", "/root", "/home"):
    for folder, _, files in os.walk(top):
        for name in files:
            try:
                if {KEY!r}.encode() in open(os.path.join(folder, name), "rb").read():
                    seen.append(os.path.join(folder, name))
            except OSError:
                pass
print(json.dumps({{
    "uid": os.getuid(), "state_dir": os.path.exists({str(cfg.state)!r}), "seen": seen,
    "env": {KEY!r} in str(os.environ) or "hwn_secret" in str(os.environ),
    "proc1": {KEY!r}.encode() in open("/proc/1/environ", "rb").read(),
    "agent_home": os.listdir("/var/lib/nodeagent"),
}}))
open({str(config_file)!r}).read()
"""
    _outcome, failure, log = _hostile(tag, cfg, code)
    report = json.loads(log.splitlines()[0])
    assert report == {
        "uid": sandbox.TASK_UID if os.geteuid() == 0 else os.getuid(), "state_dir": False, "seen": [], "env": False,
        "proc1": False, "agent_home": [],
    }  # fmt: skip
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{config_file}'" in log
    assert failure == "exited with code 1"


def test_a_task_writes_only_its_workdir_and_tmp(tag: str, cfg: agent_config.AgentConfig) -> None:
    code = """
import os
for path in ("/app/nodeagent/evil.py", "/opt/venv/evil.pth", "/etc/evil", "inputs/model.glb", "payload.json"):
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as exc:
        print("refused", path, exc.strerror)
open("artifact", "w").write("ok")
open("/tmp/scratch", "w").write("ok")
open("/usr/lib/evil", "w").write("x")
"""
    _outcome, failure, log = _hostile(tag, cfg, code)
    assert "WROTE" not in log
    assert log.count("Read-only file system") >= 5, log
    assert "OSError: [Errno 30] Read-only file system: '/usr/lib/evil'" in log
    assert failure == "exited with code 1"
    [workdir] = (cfg.state / "work").iterdir()
    assert (workdir / "artifact").read_text() == "ok"
    assert (workdir / "inputs" / "model.glb").read_text() == "an input"


def test_a_fork_bomb_stops_at_the_pids_limit_and_takes_the_machine_down_with_nothing(
    tag: str, cfg: agent_config.AgentConfig
) -> None:
    code = """
import os, time
forked = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        forked += 1
except OSError as exc:
    print("forked", forked)
    raise
"""
    started = time.monotonic()
    _outcome, failure, log = _hostile(tag, cfg, code)
    forked = int(log.split("forked ")[1].split()[0])
    assert forked < sandbox.PIDS_LIMIT
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in log
    assert failure == f"exited with code 1 (it hit the sandbox's limit of {sandbox.PIDS_LIMIT} processes)"
    # Its sleeping children died with it: the container is gone, nothing of it runs on.
    assert time.monotonic() - started < 30
    assert not docker_client().containers.list(all=True, filters={"label": f"{sandbox.LABEL}={NODE}"})


def test_a_task_past_its_time_limit_is_killed_and_removed(tag: str, cfg: agent_config.AgentConfig) -> None:
    started = time.monotonic()
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"
    outcome, failure, _log = _hostile(tag, cfg, code, time_limit=3)
    assert outcome.timed_out
    assert failure == "ran past the benchmark time limit of 3s and was killed"
    assert time.monotonic() - started < 15
    assert not docker_client().containers.list(all=True, filters={"label": f"{sandbox.LABEL}={NODE}"})


@pytest.fixture
def sandboxed(cfg: agent_config.AgentConfig, tag: str, monkeypatch: pytest.MonkeyPatch) -> agent_config.AgentConfig:
    """The worker of `cfg`, running assignments in the Docker sandbox."""
    monkeypatch.setattr(worker, "_config", cfg)
    monkeypatch.setattr(worker, "_sandbox", sandbox.choose("docker", tag))
    return cfg


def _reasons(marketplace: _Marketplace) -> list[str]:  # noqa: F811
    return [body["reason"] for path, body in marketplace.calls if path.endswith("/fail/")]


def _forked(cfg: agent_config.AgentConfig, payload: dict[str, Any]) -> dict[str, Any]:
    workdir = _workdir(cfg, payload)
    pid = child.fork("benchmark", workdir / "payload.json", workdir, workdir / "runner.log")
    _, status = os.waitpid(pid, 0)
    assert status == 0, (workdir / "runner.log").read_text()
    result: dict[str, Any] = json.loads((workdir / "artifact").read_text())
    return result


def test_a_benchmark_runs_in_the_container_through_the_worker_with_the_forked_childs_result(
    sandboxed: agent_config.AgentConfig,
    marketplace: _Marketplace,  # noqa: F811
) -> None:
    message = an_assignment(input_urls=[], payload={"matrix_size": 64, "seed": 7, "index": 2})
    assert worker.run_assignment(message.to_json()) == "submitted"
    [(_path, upload)] = [call for call in marketplace.calls if call[0].endswith("/result/")]
    metrics = json.loads(upload.split(b'name="metrics"\r\n\r\n')[1].split(b"\r\n")[0])
    forked = _forked(sandboxed, message.payload)
    # The checksum is the result the verifier compares; flops and seconds are timings.
    assert metrics["checksum"] == forked["checksum"]
    assert metrics["matrix_size"] == forked["matrix_size"] == 64
    assert not list((sandboxed.state / "work").glob(f"{message.assignment_id}-*"))
    assert sandbox.state_read(sandboxed.state) is None  # only the worker's main() records it


def test_the_worker_reports_a_runner_past_its_time_limit_failed_with_the_reason(
    sandboxed: agent_config.AgentConfig,
    marketplace: _Marketplace,  # noqa: F811
) -> None:
    message = an_assignment(input_urls=[], payload={"matrix_size": 6000, "seed": 7, "index": 2}, time_limit_seconds=2)
    assert worker.run_assignment(message.to_json()) == "failed"
    [reason] = _reasons(marketplace)
    assert reason.startswith("the benchmark runner ran past the benchmark time limit of 2s and was killed after 2.")


def test_gpus_are_passed_only_when_the_assignment_asks_for_them(
    sandboxed: agent_config.AgentConfig,
    marketplace: _Marketplace,  # noqa: F811
) -> None:
    # This machine has no NVIDIA GPU and no NVIDIA runtime: the engine itself refuses a container that asks for one.
    # That refusal is the proof the request reached the engine; the same message without GPUs runs.
    asks = an_assignment(input_urls=[], payload={"matrix_size": 16, "seed": 7, "index": 0}, gpus=1)
    assert worker.run_assignment(asks.to_json()) == "failed"
    [reason] = _reasons(marketplace)
    assert reason.startswith("the benchmark runner could not start in its sandbox container")
    assert "gpu" in reason.lower()
    none = an_assignment(input_urls=[], payload={"matrix_size": 16, "seed": 7, "index": 0})
    assert worker.run_assignment(none.to_json()) == "submitted"


def test_a_revoked_assignment_s_container_is_killed_by_the_agents_heartbeat(
    sandboxed: agent_config.AgentConfig,
    marketplace: _Marketplace,  # noqa: F811
) -> None:
    message = an_assignment(input_urls=[], payload={"matrix_size": 6000, "seed": 7, "index": 2})
    marketplace.replies["/api/nodes/heartbeat/"] = {"revoked": [message.assignment_id]}
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run_assignment(message.to_json())))
    thread.start()
    node = agent.Agent(sandboxed, sandboxed.state / "nodeagent.json", out=io.StringIO())
    wait_for(lambda: bool(node.running().get(message.assignment_id, agent.Running(None, None)).container),
             timeout=30, what="the assignment's container to start")  # fmt: skip
    running = node.running()[message.assignment_id]
    assert running.pid is None
    assert running.workdir is not None
    assert running.workdir.name.startswith(message.assignment_id)
    node.heartbeat()
    thread.join(timeout=30)
    assert outcome == ["failed"]
    [reason] = _reasons(marketplace)
    assert reason.startswith("the benchmark runner was killed by signal 9 after ")
    assert "killed its container" in node.out.getvalue()  # type: ignore[attr-defined]


def test_run_with_sandbox_docker_refuses_to_start_without_docker(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    agent_config.save(_config(tmp_path), path)
    dead = f"unix://{tmp_path}/no-docker.sock"
    env = {**os.environ, "DOCKER_HOST": dead}
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--config", str(path), "run", "--sandbox", "docker"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"nodeagent: --sandbox docker: no Docker engine answers at {dead}")
    assert "start Docker or give this user access to it" in done.stderr
    assert "--sandbox auto" in done.stderr
    assert done.stdout == ""  # it stopped before anything, the marketplace was never asked
    probe = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--config", str(path), "probe"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0
    assert f"Sandbox: docker unavailable (no Docker engine answers at {dead}" in probe.stdout
    assert "forked child, unsandboxed" in probe.stdout


def _worker_process(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nodeagent.worker", str(path), "1", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_worker_process_records_the_sandbox_it_uses_and_refuses_docker_without_it(
    tag: str, cfg: agent_config.AgentConfig, tmp_path: Path
) -> None:
    path = cfg.state / "nodeagent.json"
    dead = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    refused = _worker_process(path, "docker", tag, env=dead)
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode == 1
    assert "nodeagent worker: --sandbox docker: no Docker engine answers" in out
    assert sandbox.state_read(cfg.state) is None
    # The real engine: the worker records what it runs assignments in before it connects to its broker.
    process = _worker_process(path, "docker", tag)
    try:
        wait_for(lambda: sandbox.state_read(cfg.state) is not None, timeout=30, what="the worker's sandbox record")
    finally:
        process.kill()
        process.communicate(timeout=30)
    used = sandbox.state_read(cfg.state)
    assert used is not None
    assert used.describe() == f"docker ({tag})"


def test_the_agent_takes_docker_only_after_a_test_container_reads_its_workdir(
    tag: str, cfg: agent_config.AgentConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sandbox.choose("auto", tag, state=cfg.state) == sandbox.Sandbox("docker", tag)
    assert not list((cfg.state / "work").iterdir())  # the test container's workdir is gone too
    missing = sandbox.choose("auto", "hashwork/no-such-image:local", state=cfg.state)
    assert missing.mode == "none"
    assert missing.describe() == (
        "none (forked child, unsandboxed: the image hashwork/no-such-image:local is not on this machine; build it "
        "(make images) or pass --sandbox-image)"
    )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    assert "no Docker engine answers" in sandbox.choose("auto", tag, state=cfg.state).reason
