"""docker/nodeagent-entrypoint.sh: enrols once, then runs; run with a stand-in `nodeagent` that records its calls.

The recorded `enroll` arguments are then parsed by the real nodeagent CLI, so a renamed option fails here and not on
a volunteer's first start.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.cli import parser
from tests.deploy.helpers import DOCKER

SCRIPT = DOCKER / "nodeagent-entrypoint.sh"
FAKE_AGENT = """\
import json, os, sys
with open(os.environ["CALLS"], "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "enroll":
    with open(os.environ["HASHWORK_AGENT_CONFIG"], "w") as config:
        config.write("{}")
"""


@dataclass
class Container:
    config: Path
    calls: Path
    env: dict[str, str]

    def start(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(SCRIPT), *args], env={**self.env, **env}, capture_output=True, text=True, check=False, timeout=30
        )

    def recorded(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]


@pytest.fixture
def container(tmp_path: Path) -> Container:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    agent = bin_dir / "nodeagent"
    agent.write_text(f"#!{sys.executable}\n{FAKE_AGENT}")
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "state" / "nodeagent.json"
    config.parent.mkdir()
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HASHWORK_AGENT_CONFIG": str(config),
        "CALLS": str(tmp_path / "calls.jsonl"),
    }
    return Container(config=config, calls=tmp_path / "calls.jsonl", env=env)


def test_it_enrols_on_the_first_start_with_options_the_cli_knows_and_then_runs(container: Container) -> None:
    done = container.start(
        "run",
        NODEAGENT_MARKETPLACE_URL="http://web:8000",
        NODEAGENT_ENROLL_TOKEN="operator-token",
        NODEAGENT_NAME="rig-1",
        NODEAGENT_SLOTS="2",
    )
    assert done.returncode == 0, done.stderr
    enroll, run = container.recorded()
    args = parser().parse_args(enroll)
    assert (args.command, args.marketplace, args.token, args.name, args.slots) == (
        "enroll",
        "http://web:8000",
        "operator-token",
        "rig-1",
        2,
    )
    assert args.key_file is None
    assert run == ["run"]


def test_it_imports_the_operators_wallet_when_given_a_key_file(container: Container) -> None:
    done = container.start(
        NODEAGENT_MARKETPLACE_URL="https://hashwork.example",
        NODEAGENT_ENROLL_TOKEN="operator-token",
        NODEAGENT_KEY_FILE="/run/secrets/wallet",
    )
    assert done.returncode == 0, done.stderr
    enroll, run = container.recorded()
    assert parser().parse_args(enroll).key_file == "/run/secrets/wallet"
    assert run == ["run"]  # `run` is the default command


def test_it_only_runs_once_the_volume_holds_a_config(container: Container) -> None:
    container.config.write_text("{}")
    done = container.start("run", NODEAGENT_MARKETPLACE_URL="http://web:8000", NODEAGENT_ENROLL_TOKEN="unused")
    assert done.returncode == 0, done.stderr
    assert container.recorded() == [["run"]]


def test_it_says_what_to_set_when_it_cannot_enrol(container: Container) -> None:
    done = container.start("run", NODEAGENT_MARKETPLACE_URL="http://web:8000")
    assert done.returncode == 2
    assert "NODEAGENT_ENROLL_TOKEN" in done.stderr
    assert container.recorded() == []


def test_other_commands_go_to_nodeagent_as_they_are(container: Container) -> None:
    container.config.write_text("{}")
    done = container.start("status", "--limit", "3")
    assert done.returncode == 0, done.stderr
    assert container.recorded() == [["status", "--limit", "3"]]
