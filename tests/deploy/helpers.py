"""Reading docker/: the compose file with compose's own variable interpolation, .env files and Dockerfiles."""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML comes with drf-spectacular
    yaml = None

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
MARKETPLACE_DOCKERFILE = "docker/marketplace.Dockerfile"

# Compose's interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)


class MissingVariable(Exception):
    """A ${NAME:?message} whose variable is unset or empty: compose refuses to start with this message."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """`value` with every variable replaced as `docker compose` does."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["name"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?") and not present:
            raise MissingVariable(f"{name}: {arg}")
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def variables(value: str) -> set[str]:
    """The names of the variables `value` refers to."""
    return {m["bare"] or m["name"] for m in _VARIABLE.finditer(value) if not m["escaped"]}


def walk_strings(node: Any) -> list[str]:
    """Every string in a loaded YAML document, keys and values."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in walk_strings(key) + walk_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in walk_strings(item)]
    return []


def resolve(node: Any, env: dict[str, str]) -> Any:
    """The loaded document with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines, as compose reads a .env file (comments and blank lines skipped)."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not NAME=value"
        entries[name.strip()] = value.strip()
    return entries


def load_compose_raw() -> dict[str, Any]:
    """docker/compose.yml as YAML (anchors and merge keys applied), variables not yet interpolated."""
    if yaml is None:
        pytest.fail(
            "PyYAML is not installed, so docker/compose.yml cannot be read (it normally comes with drf-spectacular): "
            ".venv/bin/pip install pyyaml, or install the docker compose plugin."
        )
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def command_argv(command: str | list[str]) -> list[str]:
    """A service's command as an argument list (compose splits a string command like a shell)."""
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(argv: list[str], name: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE` in argv."""
    for index, arg in enumerate(argv):
        if arg == name:
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} is not in {argv}")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile: continuation lines joined, comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, arguments = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            pending = []
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def env_assignments(instructions: list[Instruction]) -> dict[str, str]:
    """What the ENV instructions set (KEY=value form), later ones winning; $VAR references left as they are."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV on line {instruction.line} is not in KEY=value form"
                values[name] = value
    return values


def load_script(name: str) -> ModuleType:
    """A script of docker/ (not a package) as a module, e.g. load_script("stack") for docker/stack.py."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
