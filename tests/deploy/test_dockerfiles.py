"""The Dockerfiles under docker/, read: pinned bases, a user that is not root, no secrets, and what each image needs.

The images themselves are built by `make images` and checked as built in tests/deploy/test_images.py; these
readings also cover what cannot be built here (the CUDA node agent needs an nvidia/cuda base from a registry).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.deploy.helpers import DOCKER, MARKETPLACE_DOCKERFILE, REPO, Instruction, dockerfile_instructions

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
NAMES = [path.name for path in DOCKERFILES]
# Images that run Blender: their system libraries come from base.Dockerfile (or the CUDA one's own).
BLENDER_IMAGES = ["base.Dockerfile", "nodeagent-cuda.Dockerfile"]
PYTHON_IMAGES = ["marketplace.Dockerfile", "nodeagent.Dockerfile"]


def instructions(name: str) -> list[Instruction]:
    return dockerfile_instructions(DOCKER / name)


def final_stage(name: str) -> list[Instruction]:
    found = instructions(name)
    last_from = max(i for i, instruction in enumerate(found) if instruction.keyword == "FROM")
    return found[last_from:]


def apt_packages(name: str) -> set[str]:
    packages: set[str] = set()
    for instruction in instructions(name):
        if instruction.keyword != "RUN" or "apt-get install" not in instruction.arguments:
            continue
        for command in instruction.arguments.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                packages |= {word for word in words[2:] if not word.startswith("-")}
    return packages


def _pattern(pattern: str) -> re.Pattern[str]:
    # .dockerignore patterns are anchored at the context root; ** spans folders, * and ? stay within one.
    regex, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out (a pattern matching it or a parent folder; the last one wins)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for line in lines:
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = _pattern(line.removeprefix("!").strip("/"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_the_images_the_deployment_builds_are_all_here() -> None:
    assert set(NAMES) >= {
        "base.Dockerfile", "marketplace.Dockerfile", "nodeagent.Dockerfile", "nodeagent-cuda.Dockerfile",
        "anvil.Dockerfile", "postgres.Dockerfile", "redis.Dockerfile",
    }  # fmt: skip


def arg_defaults(name: str) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for instruction in instructions(name):
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            key, _, value = instruction.arguments.partition("=")
            defaults.setdefault(key.strip(), value.strip().strip('"'))
    return defaults


@pytest.mark.parametrize("name", NAMES)
def test_it_starts_with_from_and_pins_every_base_image(name: str) -> None:
    found = instructions(name)
    # Only ARGs naming the base may come before the first FROM.
    assert next(i.keyword for i in found if i.keyword != "ARG") == "FROM"
    stages: set[str] = set()
    for instruction in found:
        if instruction.keyword != "FROM":
            continue
        words = [word for word in instruction.arguments.split() if not word.startswith("--")]
        # FROM ${BASE_IMAGE}: the ARG's default is the image (hashwork/base:local, debian:bookworm-slim).
        image = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults(name)[m[1]], words[0])
        if image not in stages:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag, f"line {instruction.line}: {image} needs an explicit tag"
            assert tag != "latest", f"line {instruction.line}: {image} needs a tag that is not latest"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


@pytest.mark.parametrize("name", NAMES)
def test_its_processes_run_as_a_user_that_is_not_root(name: str) -> None:
    users = [instruction.arguments.split(":")[0] for instruction in final_stage(name) if instruction.keyword == "USER"]
    assert users, "no USER: the processes would run as root"
    assert users[-1] not in {"root", "0"}


@pytest.mark.parametrize("name", NAMES)
def test_no_secret_is_baked_into_it(name: str) -> None:
    for instruction in instructions(name):
        if instruction.keyword in {"ENV", "ARG"}:
            names = [pair.partition("=")[0] for pair in shlex.split(instruction.arguments)]
            assert not [n for n in names if re.search(r"KEY|SECRET|PASSWORD|TOKEN", n)], instruction
        if instruction.keyword in {"COPY", "ADD"}:
            assert ".env" not in instruction.arguments.split(), instruction


@pytest.mark.parametrize("name", [n for n in NAMES if n != "anvil.Dockerfile"])
def test_everything_it_copies_is_in_the_build_context(name: str) -> None:
    for instruction in instructions(name):
        if instruction.keyword != "COPY" or "--from=" in instruction.arguments:
            continue
        *sources, _destination = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
        for source in sources:
            if source != ".":
                # docker/stage/ holds what docker/images.py writes before it builds (the requirements list).
                staged = source.startswith("docker/stage/")
                assert staged or (REPO / source).exists(), f"line {instruction.line}: {source} does not exist"
                assert not dockerignored(source), f"line {instruction.line}: .dockerignore leaves {source} out"


def test_the_build_context_has_what_the_images_run_and_nothing_local_or_secret() -> None:
    needed = [
        "pyproject.toml",
        "README.md",  # pyproject.toml's readme: the project does not build without it
        "manage.py",
        "package.json",
        "contracts/build/JobEscrow.json",
        "contracts/build/ComputeToken.json",
        "marketplace/settings.py",
        "docker/deploy_contracts.py",
        "docker/nodeagent-entrypoint.sh",
    ]
    assert [path for path in needed if dockerignored(path)] == []
    assert (REPO / "contracts/build/JobEscrow.json").is_file()
    left_out = [".venv/bin/python", "node_modules/solc/package.json", "var/hashwork.sqlite3", ".git/HEAD"]
    left_out += [
        "docker/.env",
        ".env",
        "marketplace/__pycache__/settings.cpython-311.pyc",
        "hashwork.egg-info/PKG-INFO",
    ]
    assert [path for path in left_out if not dockerignored(path)] == []


@pytest.mark.parametrize("name", BLENDER_IMAGES)
def test_images_that_run_blender_install_its_system_packages(name: str) -> None:
    # The Makefile's list is the one the test suite and `make demo` run with.
    makefile = (REPO / "Makefile").read_text()
    wanted = re.search(r"^SYSTEM_PACKAGES\s*:=\s*(.+)$", makefile, re.MULTILINE)
    assert wanted is not None
    assert set(wanted[1].split()) <= apt_packages(name)
    # tini is PID 1: it reaps the Blender and torch children.
    assert "tini" in apt_packages(name)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "base.Dockerfile"])
def test_every_image_runs_under_tini_and_says_how_it_is_healthy(name: str) -> None:
    entrypoint = [i.arguments for i in final_stage(name) if i.keyword == "ENTRYPOINT"]
    assert entrypoint
    assert entrypoint[-1].startswith('["tini", "--"')
    assert [i for i in final_stage(name) if i.keyword == "HEALTHCHECK"], "no HEALTHCHECK"


@pytest.mark.parametrize("name", NAMES)
def test_every_image_is_labelled_with_its_git_revision_last(name: str) -> None:
    labels = [i for i in final_stage(name) if i.keyword == "LABEL"]
    assert labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels[-1].arguments
    # Last: a new revision changes only the metadata layer, and every layer above stays cached.
    assert final_stage(name)[-1] == labels[-1]


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_the_python_images_install_pinned_wheels_in_a_build_stage_and_copy_only_the_venv(name: str) -> None:
    runs = [i.arguments for i in instructions(name) if i.keyword == "RUN"]
    assert any("-c /tmp/constraints.txt" in run for run in runs)
    # Without the host's wheels (WHEELS_URL), torch comes from PyTorch's CPU index, and a CUDA build fails the build.
    assert any("--extra-index-url https://download.pytorch.org/whl/cpu" in run for run in runs)
    assert any("torch.version.cuda is None" in run for run in runs)
    assert sum(1 for i in instructions(name) if i.keyword == "FROM") == 2
    assert any(i.keyword == "COPY" and "--from=deps /opt/venv" in i.arguments for i in final_stage(name))

    # The two images share their deps stage word for word, so Docker builds it once.
    def deps(n: str) -> list[str]:
        found = instructions(n)
        second = [i for i, x in enumerate(found) if x.keyword == "FROM"][1]
        return [x.arguments for x in found[:second]]

    assert deps("marketplace.Dockerfile") == deps("nodeagent.Dockerfile")


def test_the_marketplace_image_collects_static_files() -> None:
    runs = [i.arguments for i in instructions(Path(MARKETPLACE_DOCKERFILE).name) if i.keyword == "RUN"]
    assert any("manage.py collectstatic" in run for run in runs)


def test_the_cuda_node_agent_image_runs_python_3_11_on_a_cuda_base() -> None:
    found = instructions("nodeagent-cuda.Dockerfile")
    assert found[0].arguments.startswith("nvidia/cuda:")
    assert {"python3.11", "python3.11-venv"} <= apt_packages("nodeagent-cuda.Dockerfile")
    runs = [i.arguments for i in found if i.keyword == "RUN"]
    assert not any("download.pytorch.org/whl/cpu" in run for run in runs)
    assert any("assert torch.version.cuda" in run for run in runs)
    env = {i.arguments for i in found if i.keyword == "ENV"}
    assert any("NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics" in e for e in env)


def test_the_chain_image_runs_anvils_native_binary_with_pruned_history() -> None:
    copies = [i.arguments for i in instructions("anvil.Dockerfile") if i.keyword == "COPY"]
    # Its context is docker/stage/anvil/, where docker/images.py stages the binary from node_modules.
    assert copies == ["anvil /usr/local/bin/anvil"]
    last = {i.keyword: i.arguments for i in final_stage("anvil.Dockerfile")}
    assert last["ENTRYPOINT"] == '["tini", "--", "anvil"]'
    assert '"--prune-history", "64"' in last["CMD"]
