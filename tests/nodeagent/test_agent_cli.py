"""The node agent's command line, config file and retry helper, without a marketplace."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeagent import cli
from nodeagent import config as agent_config
from nodeagent.retry import TransientError, retry

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **changes: object) -> agent_config.AgentConfig:
    values: dict[str, object] = {
        "marketplace_url": "http://127.0.0.1:9",
        "node_id": "n1",
        "node_name": "rig",
        "token": "hwn_x",
        "broker_url": "redis://u:p@127.0.0.1:6379/0",
        "broker_prefix": "hashwork:n.1:",
        "queue": "node.1",
        "wallet_key": "0x" + "11" * 32,
        "wallet_address": "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
        "state_dir": str(tmp_path / "state"),
    }
    values.update(changes)
    return agent_config.AgentConfig(**values)  # type: ignore[arg-type]


def test_every_command_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "nodeagent", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("enroll", "probe", "run", "status", "pause", "resume", "withdraw", "health"):
        assert command in out.stdout
        sub = subprocess.run(
            [sys.executable, "-m", "nodeagent", command, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert sub.returncode == 0, sub.stderr
        assert "usage: nodeagent" in sub.stdout


def test_probe_says_clearly_when_there_is_no_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    # This machine has no NVIDIA GPU (nor driver): the probe must say so rather than fail.
    assert cli.main(["probe"]) == 0
    out = capsys.readouterr().out
    assert "GPUs: none (" in out
    assert "CPU cores:" in out
    assert cli.main(["probe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gpus"] == []
    assert report["cpu_cores"] >= 1
    assert report["software"]["numpy"]


def test_the_config_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "agent.json"
    cfg = _config(tmp_path)
    agent_config.save(cfg, path)
    assert path.stat().st_mode & 0o077 == 0
    assert agent_config.load(path) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"slots": 0}, "slots"),
        ({"max_temp_c": 5}, "max_temp_c"),
        ({"power_cap_w": 10}, "power_cap_w"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds"),
    ],
)
def test_bad_limits_are_refused_by_name(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(agent_config.ConfigError, match=message):
        agent_config.validate(_config(tmp_path, **changes))


def test_commands_without_a_config_say_to_enrol_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", str(tmp_path / "missing.json"), "status"]) == 2
    assert "nodeagent enroll --marketplace URL --token TOKEN" in capsys.readouterr().err


def test_enrolling_over_an_existing_config_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.json"
    agent_config.save(_config(tmp_path), path)
    code = cli.main(["--config", str(path), "enroll", "--marketplace", "http://127.0.0.1:9", "--token", "t"])
    assert code == 2
    assert "--force" in capsys.readouterr().err


def test_a_bad_key_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key"
    key.write_text("not a key")
    code = cli.main(
        ["--config", str(tmp_path / "a.json"), "enroll", "--marketplace", "http://x", "--token", "t",
         "--key-file", str(key)]
    )  # fmt: skip
    assert code == 2
    assert "--key-file" in capsys.readouterr().err


def test_an_unreachable_marketplace_is_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback refuses connections at once.
    code = cli.main(
        ["--config", str(tmp_path / "a.json"), "enroll", "--marketplace", "http://127.0.0.1:9", "--token", "t"]
    )
    assert code == 2
    assert "Cannot reach the marketplace" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_pause_and_resume_flip_the_local_flag(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    cfg = _config(tmp_path)
    agent_config.save(cfg, path)
    assert cli.main(["--config", str(path), "pause"]) == 0
    assert (cfg.state / "paused").exists()
    assert cli.main(["--config", str(path), "resume"]) == 0
    assert not (cfg.state / "paused").exists()


def test_retry_backs_off_then_gives_up() -> None:
    waits: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        raise TransientError("connection refused")

    with pytest.raises(TransientError):
        retry(flaky, what="test", tries=4, base=1.0, cap=3.0, sleep=waits.append)
    assert calls == 4
    assert len(waits) == 3
    assert all(0 <= w <= min(3.0, 2**i) for i, w in enumerate(waits))


def test_retry_returns_as_soon_as_a_call_succeeds() -> None:
    outcomes = iter([TransientError("503"), "ok"])

    def call() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry(call, what="test", sleep=lambda _: None) == "ok"


@pytest.mark.parametrize("amount", ["-1", "0", "ten", "0.0000000000000000001"])
def test_a_bad_withdraw_amount_is_named_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], amount: str
) -> None:
    path = tmp_path / "agent.json"
    agent_config.save(_config(tmp_path), path)
    assert cli.main(["--config", str(path), "withdraw", amount]) == 2
    assert "AMOUNT" in capsys.readouterr().err


def test_health_is_ok_only_while_the_agent_runs_and_its_worker_consumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodeagent import agent
    from nodeagent.broker import broker_health_write

    path = tmp_path / "agent.json"
    cfg = _config(tmp_path)
    agent_config.save(cfg, path)
    cfg.state.mkdir(parents=True)
    assert cli.main(["--config", str(path), "health"]) == 1
    assert "unhealthy: the agent is not running" in capsys.readouterr().err
    alive = cfg.state / agent.ALIVE_FILE
    alive.write_text(json.dumps({"pid": 1, "at": time.time()}))
    assert cli.main(["--config", str(path), "health"]) == 1
    assert "the worker is not consuming its queue: the worker has not connected" in capsys.readouterr().err
    broker_health_write(cfg, ok=True)
    assert cli.main(["--config", str(path), "health"]) == 0
    assert capsys.readouterr().out == "ok: the worker consumes node.1\n"
    alive.write_text(json.dumps({"pid": 1, "at": time.time() - 600}))
    assert cli.main(["--config", str(path), "health"]) == 1
    assert "the agent's loop has not run for 600s" in capsys.readouterr().err
    broker_health_write(cfg, ok=False, error="ConnectionError: refused")
    alive.write_text(json.dumps({"pid": 1, "at": time.time()}))
    assert cli.main(["--config", str(path), "health"]) == 1
    assert capsys.readouterr().err == "unhealthy: the worker is not consuming its queue: ConnectionError: refused\n"
    assert cli.main(["--config", str(tmp_path / "none.json"), "health"]) == 1
    assert "unhealthy: No node config" in capsys.readouterr().err


def test_a_bad_sandbox_choice_in_the_config_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(agent_config.ConfigError, match="sandbox is 'podman'; use one of auto, docker, none"):
        agent_config.validate(_config(tmp_path, sandbox="podman"))
    with pytest.raises(agent_config.ConfigError, match="sandbox_image"):
        agent_config.validate(_config(tmp_path, sandbox_image="has space"))


def test_the_sandbox_the_worker_uses_is_recorded_for_status(tmp_path: Path) -> None:
    from nodeagent import sandbox

    assert sandbox.state_read(tmp_path) is None
    sandbox.state_write(tmp_path, sandbox.choose("none", "any"))
    assert sandbox.state_read(tmp_path) == sandbox.Sandbox("none", None, "--sandbox none")
    assert sandbox.state_read(tmp_path).describe() == "none (forked child, unsandboxed: --sandbox none)"  # type: ignore[union-attr]
