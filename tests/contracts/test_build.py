"""The committed artifacts match the sources: recompiling gives the same bytecode, ABI and source hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts import compile as solc


def test_the_committed_artifacts_match_a_fresh_compile() -> None:
    fresh = solc.compile_contracts()

    for name, artifact in fresh.items():
        committed = json.loads((solc.BUILD_DIR / f"{name}.json").read_text())
        assert committed["bytecode"] == artifact["bytecode"], f"{name}: stale bytecode, run python -m contracts.compile"
        assert committed["deployedBytecode"] == artifact["deployedBytecode"], f"{name}: stale deployed bytecode"
        assert committed["abi"] == artifact["abi"], f"{name}: stale ABI, run python -m contracts.compile"
        assert committed["sourceHash"] == artifact["sourceHash"], f"{name}: stale source hash"
        assert committed["compiler"]["version"].startswith("0.8.37+")
        assert committed["compiler"]["settings"]["evmVersion"] == "prague"
        assert committed["compiler"]["settings"]["optimizer"]["enabled"] is True


def test_the_source_hash_changes_with_any_source_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["contracts/src/JobEscrow.sol", "contracts/src/ComputeToken.sol"]
    before = solc.source_hash(names)
    copy = tmp_path / "contracts" / "src"
    copy.mkdir(parents=True)
    for name in names:
        (tmp_path / name).write_text((solc.REPO_ROOT / name).read_text())
    (tmp_path / names[0]).write_text((tmp_path / names[0]).read_text() + "\n// one more line\n")
    monkeypatch.setattr(solc, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(solc, "NODE_MODULES", tmp_path / "node_modules")

    assert solc.source_hash(names) != before
