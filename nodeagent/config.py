"""The agent's configuration: written once by `nodeagent enroll` (mode 0600), loaded and validated at start."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path.home() / ".config" / "hashwork" / "nodeagent.json"
SANDBOX_CHOICES = ("auto", "docker", "none")
DEFAULT_SANDBOX_IMAGE = "hashwork/nodeagent:local"


class ConfigError(Exception):
    """The agent's configuration is missing or invalid; the message says what to do."""


@dataclass(frozen=True)
class AgentConfig:
    marketplace_url: str
    node_id: str
    node_name: str
    token: str
    broker_url: str
    broker_prefix: str
    queue: str
    wallet_key: str
    wallet_address: str
    state_dir: str
    slots: int = 1
    max_gpus: int | None = None
    max_temp_c: int | None = None
    power_cap_w: int | None = None
    heartbeat_seconds: float = 10.0
    # What each assignment runs in (nodeagent.sandbox): auto (a Docker container when Docker works, else a forked
    # child), docker (refuse to run without it) or none (a forked child, unsandboxed); the image of the container.
    sandbox: str = "auto"
    sandbox_image: str = DEFAULT_SANDBOX_IMAGE

    def with_limits(self, **limits: Any) -> AgentConfig:
        """This config with the operator's command-line limits applied (None leaves a value as it is)."""
        return replace(self, **{k: v for k, v in limits.items() if v is not None})

    @property
    def state(self) -> Path:
        return Path(self.state_dir)


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("HASHWORK_AGENT_CONFIG") or DEFAULT_PATH).expanduser()


def load(path: Path) -> AgentConfig:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"No node config at {path}: run `nodeagent enroll --marketplace URL --token TOKEN` first."
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the node config {path}: {exc}") from exc
    known = {f.name for f in fields(AgentConfig)}
    missing = sorted(f.name for f in fields(AgentConfig) if f.name not in raw and f.default is f.default_factory)
    if not isinstance(raw, dict) or missing:
        raise ConfigError(f"The node config {path} lacks {', '.join(missing)}: enrol the node again (--force).")
    config = AgentConfig(**{k: v for k, v in raw.items() if k in known})
    validate(config)
    return config


def validate(config: AgentConfig) -> None:
    if not 1 <= config.slots <= 64:
        raise ConfigError(f"slots is {config.slots}; use 1 to 64.")
    if config.max_gpus is not None and config.max_gpus < 0:
        raise ConfigError("max_gpus must be 0 or more.")
    if config.max_temp_c is not None and not 30 <= config.max_temp_c <= 110:
        raise ConfigError("max_temp_c must be between 30 and 110 (°C).")
    if config.power_cap_w is not None and config.power_cap_w < 50:
        raise ConfigError("power_cap_w must be at least 50 (W).")
    if config.heartbeat_seconds <= 0:
        raise ConfigError("heartbeat_seconds must be positive.")
    if config.sandbox not in SANDBOX_CHOICES:
        raise ConfigError(f"sandbox is {config.sandbox!r}; use one of {', '.join(SANDBOX_CHOICES)}.")
    if not config.sandbox_image or any(c.isspace() for c in config.sandbox_image):
        raise ConfigError(f"sandbox_image {config.sandbox_image!r} is not an image name, e.g. {DEFAULT_SANDBOX_IMAGE}.")


def save(config: AgentConfig, path: Path) -> None:
    """Write the config readable by its owner only: it holds the node token and the wallet key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(config), handle, indent=2)
    os.replace(tmp, path)
    path.chmod(0o600)
