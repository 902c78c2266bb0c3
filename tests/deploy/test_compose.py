"""docker/compose.yml: valid, complete, and wired to the project's real entry points, queues and settings.

No Docker engine runs here (nor in CI), so nothing is started: `docker compose config` checks the file where the
compose plugin is installed, and everything else is read from the YAML as compose would interpolate it.
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.core.management import get_commands

from marketplace import config as marketplace_config
from marketplace.core.management.commands.chain import DEPLOYER_KEY_VARIABLE
from marketplace.core.queues import MARKETPLACE_QUEUES, REPLAY_QUEUES, Queue
from tests.deploy.helpers import (
    COMPOSE_FILE,
    DOCKER,
    ENV_EXAMPLE,
    MARKETPLACE_DOCKERFILE,
    REPO,
    MissingVariable,
    command_argv,
    dockerfile_instructions,
    env_assignments,
    load_compose_raw,
    load_script,
    option,
    read_env_file,
    resolve,
    variables,
    walk_strings,
)

SERVICES = {"postgres", "redis", "anvil", "web", "worker", "replay", "beat", "settlement", "flower", "nodeagent"}
ONE_SHOTS = {"migrate", "deploy"}
SECRETS = {
    "SECRET_KEY": "s" * 50,
    "POSTGRES_PASSWORD": "pgpassword0123",
    "REDIS_PASSWORD": "redispassword0123",
    "FLOWER_BASIC_AUTH": "admin:flowerpassword",
}
# Variables a marketplace service may be given that marketplace/config.py does not read, and who reads them.
OTHER_READERS = {
    "deploy": {DEPLOYER_KEY_VARIABLE},  # `manage.py chain deploy`
    "flower": {"FLOWER_BASIC_AUTH"},  # Flower's own option
}


def example_env() -> dict[str, str]:
    """docker/.env as an operator makes it from the example: the example with the secrets filled in."""
    env = read_env_file(ENV_EXAMPLE)
    env.update(SECRETS)
    return env


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_compose_raw()


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = resolve(raw, example_env())
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def marketplace_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if "marketplace" in str(service.get("image", ""))}


def config_variables() -> set[str]:
    """Every environment variable name marketplace/config.py mentions (its string constants that look like one)."""
    tree = ast.parse(Path(marketplace_config.__file__).read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.isupper()
        and node.value.replace("_", "").isalnum()
    }


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    return probe.returncode == 0


# The file as a whole.
def test_the_compose_file_is_valid(raw: dict[str, Any], tmp_path: Path) -> None:
    if _compose_plugin():
        # `config` needs no daemon: it parses, interpolates and validates against the compose schema.
        env_file = tmp_path / ".env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in example_env().items()))
        argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "--profile", "gpu"]
        # Only the env file decides: the caller's own variables would override it.
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME"} or k.startswith("DOCKER_")}
        checked = subprocess.run([*argv, "config", "--quiet"], env=env, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        return
    # Without the plugin, the rules of the compose schema this file relies on.
    assert set(raw) <= {"name", "services", "volumes", "secrets"} | {key for key in raw if key.startswith("x-")}
    compose = resolve(raw, example_env())
    declared_volumes, declared_secrets = set(compose.get("volumes", {})), set(compose.get("secrets", {}))
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith((".", "/")) or source in declared_volumes, f"{name}: undeclared volume {source}"
        assert set(service.get("secrets", [])) <= declared_secrets, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
        if "healthcheck" in service:
            assert set(service["healthcheck"]) <= {"test", "interval", "timeout", "retries", "start_period"}
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_every_service_the_deployment_needs_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= SERVICES | ONE_SHOTS
    # Volumes are named hashwork_*, whichever folder compose runs from (docs/deploy.md's backups rely on it).
    assert compose["name"] == "hashwork"


def test_it_refuses_to_start_until_the_secrets_are_set(raw: dict[str, Any]) -> None:
    # The example ships them empty: nobody runs on a password published in git.
    for name in SECRETS:
        env = example_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=name):
            resolve(raw, env)


def test_every_variable_it_reads_is_in_the_example_env_file_and_none_is_left_over(raw: dict[str, Any]) -> None:
    used = {name for text in walk_strings(raw) for name in variables(text)}
    documented = set(read_env_file(ENV_EXAMPLE))
    assert used - documented == set(), "used by compose.yml but missing from .env.example"
    assert documented - used == set(), "in .env.example but used nowhere in compose.yml"


def test_compose_builds_nothing_itself_and_uses_the_images_make_images_builds(
    services: dict[str, dict[str, Any]],
) -> None:
    # The base image must exist before the others build, and the wheels are served while they do: docker/images.py
    # (make images) builds them, so a `build:` here would build them wrong.
    assert [name for name, service in services.items() if "build" in service] == []
    images = " ".join(str(service.get("image", "")) for service in services.values())
    for name in ("marketplace", "anvil", "nodeagent"):
        assert f"hashwork/{name}:local" in images
        assert f'"{name}"' in (REPO / "docker" / "images.py").read_text()


def test_every_image_has_a_pinned_tag_that_is_not_latest(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{name}: image {image} needs an explicit tag"
        assert tag != "latest", f"{name}: image {image} needs a tag that is not latest"


# Commands: real entry points, queues from the one enum.
def test_the_web_server_serves_the_projects_wsgi_application(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["web"]["command"])
    assert argv[0] == "gunicorn"
    module, _, attribute = argv[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_the_celery_services_load_the_marketplaces_celery_app(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "replay", "settlement", "beat", "flower"):
        argv = command_argv(services[name]["command"])
        assert argv[:3] == ["celery", "-A", "marketplace"], name
    assert isinstance(importlib.import_module("marketplace.celery").app, Celery)
    assert command_argv(services["beat"]["command"])[3] == "beat"
    assert command_argv(services["flower"]["command"])[3] == "flower"


def test_the_worker_consumes_exactly_the_marketplace_queues(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["worker"]["command"])
    assert argv[3] == "worker"
    assert option(argv, "--queues") == ",".join(queue.value for queue in MARKETPLACE_QUEUES)


def test_round_closes_have_a_worker_of_their_own_that_runs_nothing_else(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["replay"]["command"])
    assert argv[3] == "worker"
    assert option(argv, "--queues") == ",".join(queue.value for queue in REPLAY_QUEUES)
    assert not set(REPLAY_QUEUES) & set(MARKETPLACE_QUEUES)


def test_one_settlement_process_consumes_the_settlement_queue(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["settlement"]["command"])
    assert argv[3] == "worker"
    assert option(argv, "--queues") == Queue.SETTLEMENT.value
    assert option(argv, "--concurrency") == "1"
    assert services["settlement"].get("deploy", {}).get("replicas", 1) == 1


def test_the_one_shots_migrate_and_deploy_with_the_projects_commands(services: dict[str, dict[str, Any]]) -> None:
    commands = get_commands()
    migrate = command_argv(services["migrate"]["command"])
    assert migrate[:3] == ["python", "manage.py", "migrate"]
    assert (REPO / "manage.py").is_file()
    assert "migrate" in commands
    deploy = command_argv(services["deploy"]["command"])
    assert deploy[:2] == ["python", "docker/deploy_contracts.py"]
    assert (REPO / deploy[1]).is_file()
    assert "chain" in commands
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no", name


def test_the_chain_is_anvil_with_pruned_history_and_its_state_in_a_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    anvil = services["anvil"]
    argv = command_argv(anvil["command"])
    # Pruned, but keeping some states: with none kept, calls on "latest" race new blocks (contracts/devchain.py).
    assert int(option(argv, "--prune-history")) >= 16
    state = option(argv, "--state")
    targets = [mount.split(":")[1] for mount in anvil["volumes"]]
    assert any(state.startswith(target + "/") for target in targets), "Anvil's state must outlive its container"
    assert option(argv, "--chain-id") == "31337"


def test_the_node_agent_reserves_the_gpus_and_keeps_its_state_in_a_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    agent = services["nodeagent"]
    devices = agent["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    assert "graphics" in agent["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # OptiX
    assert any(mount.endswith(":/var/lib/nodeagent") for mount in agent["volumes"])
    # Without a GPU host the rest of the stack must still come up: the agent is opt-in.
    assert agent["profiles"] == ["gpu"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["nodeagent"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_flower_is_installed_in_the_marketplace_image(services: dict[str, dict[str, Any]]) -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    dockerfile = (REPO / MARKETPLACE_DOCKERFILE).read_text()
    assert any(d.startswith("flower") for d in dependencies) or '"flower' in dockerfile


# Ordering and health.
def test_dependencies_wait_for_health_or_completion_that_can_happen(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health check"
            if condition["condition"] == "service_completed_successfully":
                assert dependency in ONE_SHOTS, f"{name} waits for {dependency} to exit"


def test_every_long_running_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    # The agent reports to the marketplace instead (heartbeats; `nodeagent status`).
    for name in SERVICES - {"nodeagent"}:
        assert "healthcheck" in services[name], name


def test_every_marketplace_process_starts_after_the_schema_and_the_contracts(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("web", "worker", "replay", "settlement", "beat"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["deploy"]["condition"] == "service_completed_successfully", name


# Settings: the variables marketplace/config.py knows, values it accepts, secrets where they belong.
def test_marketplace_services_set_only_variables_the_configuration_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = config_variables()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ETH_RPC_URL", "OPERATOR_KEY_FILE"} <= known
    marketplace = marketplace_services(services)
    assert set(marketplace) == {"web", "worker", "replay", "settlement", "beat", "flower", "migrate", "deploy"}
    for name, service in marketplace.items():
        unknown = set(service["environment"]) - known - OTHER_READERS.get(name, set())
        assert unknown == set(), f"{name} sets variables marketplace/config.py does not read"


def test_the_configuration_accepts_what_each_marketplace_service_is_given(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    image_env = env_assignments(dockerfile_instructions(REPO / MARKETPLACE_DOCKERFILE))
    empty_secret = tmp_path / "operator_key"
    empty_secret.write_text("")  # the /dev/null default, as the container reads it
    for name, service in marketplace_services(services).items():
        env = {**image_env, **{key: str(value) for key, value in service["environment"].items()}}
        if "OPERATOR_KEY_FILE" in env:
            assert env["OPERATOR_KEY_FILE"] == "/run/secrets/operator_key"
            env["OPERATOR_KEY_FILE"] = str(empty_secret)
        loaded = marketplace_config.load(env, REPO)
        assert loaded.database_url.startswith("postgres://"), name
        assert loaded.redis_url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name
        assert loaded.eth_rpc_url == "http://anvil:8545", name
        assert {"127.0.0.1", "web"} <= set(loaded.allowed_hosts), name
        assert loaded.media_root == Path("/var/lib/hashwork/media"), name
        assert loaded.operator_key is None, name  # the local Anvil's development account


def test_only_the_settlement_worker_gets_the_operator_key(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        has_key = "operator_key" in service.get("secrets", []) or any(
            key.startswith("OPERATOR_KEY") for key in service.get("environment", {})
        )
        assert has_key == (name == "settlement"), name


def test_the_env_file_with_secrets_stays_out_of_git_and_out_of_images() -> None:
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()


# docker/stack.py (`make docker-demo`) is the same stack on host networking: the same services, the same commands.
def test_stack_py_runs_the_same_marketplace_services_with_the_same_commands_as_compose(
    services: dict[str, dict[str, Any]],
) -> None:
    stack = load_script("stack")
    # Compose listens on its bridge network's default ports; stack.py on 127.0.0.1 and ports of its own.
    expected = stack.commands(web_bind="0.0.0.0:8000", flower_options=["--port=5555"])
    assert set(expected) == set(marketplace_services(services))
    assert set(expected) == {*stack.ONE_SHOTS, *stack.MARKETPLACE}
    for name, argv in expected.items():
        assert command_argv(services[name]["command"]) == argv, name
    # And the same long-running services besides: the data stores and the chain.
    assert {*stack.INFRA, *stack.MARKETPLACE, "nodeagent"} == SERVICES


def test_each_celery_worker_is_pinged_at_the_node_name_it_runs_as(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "replay", "settlement"):
        node = option(command_argv(services[name]["command"]), "--hostname").split("@")[0]
        assert f"--destination {node}@$HOSTNAME" in services[name]["healthcheck"]["test"][1], name


def test_the_data_stores_images_can_be_the_local_ones(raw: dict[str, Any]) -> None:
    defaults = resolve(raw, example_env())["services"]
    assert defaults["postgres"]["image"] == "postgres:17-bookworm"
    assert defaults["redis"]["image"] == "valkey/valkey:9.1-alpine"
    local = {**example_env(), "HASHWORK_POSTGRES_IMAGE": "hashwork/postgres:local",
             "HASHWORK_REDIS_IMAGE": "hashwork/redis:local"}  # fmt: skip
    chosen = resolve(raw, local)["services"]
    assert chosen["postgres"]["image"] == "hashwork/postgres:local"
    assert chosen["redis"]["image"] == "hashwork/redis:local"
    # The local images answer to the commands and health checks written for the official ones.
    assert "valkey-server" in (DOCKER / "redis.Dockerfile").read_text()
    assert "valkey-cli" in (DOCKER / "redis.Dockerfile").read_text()
