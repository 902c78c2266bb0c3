"""The committed compiler output (contracts/build/*.json): ABI, bytecode, compiler version, source hash."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILD_DIR = Path(__file__).resolve().parent / "build"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    source_hash: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    """Read build/NAME.json (ComputeToken or JobEscrow)."""
    raw = json.loads((BUILD_DIR / f"{name}.json").read_text())
    return Artifact(
        name=raw["contractName"],
        abi=raw["abi"],
        bytecode=raw["bytecode"],
        deployed_bytecode=raw["deployedBytecode"],
        compiler_version=raw["compiler"]["version"],
        source_hash=raw["sourceHash"],
    )
