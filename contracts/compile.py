"""Compile contracts/src with solc-js (standard JSON, run by node) into the artifacts committed under build/.

`python -m contracts.compile` rewrites contracts/build/; `python -m contracts.compile --check` recompiles into a
temporary folder and exits 1 if the committed artifacts differ (a test does the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from contracts.errors import ChainError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SOURCE_DIR = PACKAGE_DIR / "src"
BUILD_DIR = PACKAGE_DIR / "build"
NODE_MODULES = REPO_ROOT / "node_modules"
CONTRACT_NAMES = ("ComputeToken", "JobEscrow")
SOLC_VERSION = "0.8.37"
SETTINGS: dict[str, Any] = {
    "evmVersion": "prague",
    "viaIR": True,
    # Many runs: the escrow is deployed once and release() runs for every payout batch.
    "optimizer": {"enabled": True, "runs": 10_000},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(ChainError):
    """solc reported errors, or node/solc-js is missing."""


def _unit_name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def standard_input() -> dict[str, Any]:
    """The standard-JSON input: our sources by repository-relative name; imports resolve in node_modules/."""
    sources = {_unit_name(path): {"content": path.read_text()} for path in sorted(SOURCE_DIR.glob("*.sol"))}
    return {"language": "Solidity", "sources": sources, "settings": SETTINGS}


def _read_unit(name: str) -> bytes:
    for base in (NODE_MODULES, REPO_ROOT):
        candidate = base / name
        if candidate.is_file():
            return candidate.read_bytes()
    raise CompileError(f"solc used {name}, which is neither in node_modules/ nor in the repository")


def source_hash(unit_names: list[str]) -> str:
    """sha256 over every source the compiler read (ours and OpenZeppelin's) and the settings."""
    digest = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode())
    for name in sorted(unit_names):
        digest.update(name.encode() + b"\0")
        digest.update(_read_unit(name) + b"\0")
    return "sha256:" + digest.hexdigest()


def compile_contracts() -> dict[str, dict[str, Any]]:
    """Run solc-js and return one artifact (ABI, bytecode, compiler, source hash) per contract name."""
    node = shutil.which("node")
    if node is None:
        raise CompileError("node not found: install Node.js 20+ and run `npm install`")
    if not (NODE_MODULES / "solc").is_dir():
        raise CompileError(f"solc-js is not installed in {NODE_MODULES}: run `npm install`")
    with tempfile.TemporaryDirectory(prefix="hashwork-solc-") as tmp:
        input_path, output_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        input_path.write_text(json.dumps(standard_input()))
        run = subprocess.run(
            [node, str(PACKAGE_DIR / "solc_compile.cjs"), str(input_path), str(output_path), str(REPO_ROOT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise CompileError(f"solc-js failed (exit {run.returncode}):\n{run.stderr.strip()}")
        result = json.loads(output_path.read_text())
    solc_version: str = result["solcVersion"]
    output: dict[str, Any] = result["output"]
    problems = output.get("errors", [])
    errors = [p["formattedMessage"] for p in problems if p["severity"] == "error"]
    if errors:
        raise CompileError("solc reported errors:\n" + "\n".join(errors))
    for warning in (p for p in problems if p["severity"] != "error"):
        # OpenZeppelin's own notes (transient storage in its reentrancy guard) are known and not ours to fix.
        if not warning.get("sourceLocation", {}).get("file", "").startswith("@openzeppelin/"):
            sys.stderr.write(warning["formattedMessage"])
    if not solc_version.startswith(SOLC_VERSION + "+"):
        raise CompileError(f"solc-js is {solc_version}, expected {SOLC_VERSION}: run `npm install`")

    hashed = source_hash(list(output["sources"]))
    artifacts: dict[str, dict[str, Any]] = {}
    for name in CONTRACT_NAMES:
        unit = _unit_name(SOURCE_DIR / f"{name}.sol")
        compiled = output["contracts"][unit][name]
        artifacts[name] = {
            "contractName": name,
            "sourceName": unit,
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            "compiler": {"name": "solc-js", "version": solc_version, "settings": SETTINGS},
            "sourceHash": hashed,
        }
    return artifacts


def write_artifacts(artifacts: dict[str, dict[str, Any]], build_dir: Path) -> list[Path]:
    build_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in artifacts.items():
        path = build_dir / f"{name}.json"
        path.write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def stale_artifacts(build_dir: Path = BUILD_DIR) -> list[str]:
    """Recompile and name each committed artifact whose bytecode, ABI or source hash differs."""
    fresh = compile_contracts()
    stale = []
    for name, artifact in fresh.items():
        path = build_dir / f"{name}.json"
        if not path.is_file():
            stale.append(f"{name}: {path} is missing")
            continue
        committed = json.loads(path.read_text())
        for key in ("bytecode", "deployedBytecode", "abi", "sourceHash", "compiler"):
            if committed.get(key) != artifact[key]:
                stale.append(f"{name}: {key} differs")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.compile", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report whether contracts/build/ is stale")
    parser.add_argument("--out", type=Path, default=BUILD_DIR, help="where to write the artifacts")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_artifacts(args.out)
            if stale:
                print("Stale artifacts (run `python -m contracts.compile`):\n  " + "\n  ".join(stale))
                return 1
            print(f"{args.out} is up to date.")
            return 0
        for path in write_artifacts(compile_contracts(), args.out):
            print(f"wrote {path}")
    except CompileError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
