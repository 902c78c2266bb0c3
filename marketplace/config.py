"""Twelve-factor configuration: every environment variable read, parsed and validated in one place."""

from __future__ import annotations

import importlib.util
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_DB_SCHEMES = {"sqlite", "postgres", "postgresql", "pgsql"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,48}:$")
_HOST_RE = re.compile(r"^(\*|\.?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:\d+)?$")
MIN_SECRET_KEY_LENGTH = 32


class ConfigError(Exception):
    """One or more environment variables are invalid; the message names each of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class S3Config:
    """Media storage on an S3-compatible service, via django-storages."""

    bucket: str
    endpoint_url: str | None
    region: str | None
    custom_domain: str | None


@dataclass(frozen=True)
class Config:
    """The validated configuration; settings.py turns it into Django settings."""

    base_dir: Path
    var_dir: Path
    debug: bool
    secret_key: str
    allowed_hosts: tuple[str, ...]
    database_url: str
    database_is_embedded: bool
    redis_url: str | None
    redis_prefix: str
    media_root: Path
    s3: S3Config | None
    node_online_seconds: int
    job_default_deadline_hours: int
    dev_funding: bool
    eth_rpc_url: str | None
    node_broker_url: str | None
    lease_seconds: int | None
    start_window_seconds: int | None
    artifact_limits: dict[str, int]
    operator_key: str | None
    chain_confirmations: int
    public_eth_rpc_url: str | None
    replication_p: float
    escrow_margin_hours: int = 24
    trusted_proxies: tuple[str, ...] = ()
    train_quorum: float = 2 / 3
    train_replay_share: float = 0.25
    # Settlement: a transaction with no receipt after tx_bump_seconds is re-sent with higher fees, at most
    # tx_max_bumps times; chain logs are read at most log_block_range blocks per eth_getLogs call.
    tx_bump_seconds: int = 60
    tx_max_bumps: int = 4
    log_block_range: int = 2000
    problems: tuple[str, ...] = field(default=())


def _bool(env: Mapping[str, str], name: str, default: bool, problems: list[str]) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    problems.append(f"{name}={raw!r} is not a boolean: use true or false.")
    return default


def _int(env: Mapping[str, str], name: str, default: int, problems: list[str], *, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        problems.append(f"{name}={raw!r} is not an integer.")
        return default
    if value < minimum:
        problems.append(f"{name}={value} must be at least {minimum}.")
        return default
    return value


def _probability(env: Mapping[str, str], name: str, default: float, problems: list[str]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a number.")
        return default
    if not 0.0 <= value <= 1.0:
        problems.append(f"{name}={value} is not a probability: use 0 to 1.")
        return default
    return value


def _secret_key(env: Mapping[str, str], var_dir: Path, problems: list[str]) -> str:
    raw = env.get("SECRET_KEY")
    if raw is not None:
        if len(raw) < MIN_SECRET_KEY_LENGTH:
            problems.append(
                f"SECRET_KEY is {len(raw)} characters long; use at least {MIN_SECRET_KEY_LENGTH} random "
                "characters (python -c 'import secrets; print(secrets.token_urlsafe(50))')."
            )
        return raw
    # A local install gets a random key kept under var/, so nobody runs on a key published in git.
    key_file = var_dir / "secret_key"
    try:
        if key_file.exists():
            return key_file.read_text().strip()
        var_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        key_file.write_text(key)
        key_file.chmod(0o600)
        return key
    except OSError as exc:
        problems.append(f"SECRET_KEY is unset and {key_file} cannot be created ({exc}); set SECRET_KEY.")
        return ""


def _database_url(env: Mapping[str, str], var_dir: Path, problems: list[str]) -> tuple[str, bool]:
    raw = env.get("DATABASE_URL", "").strip()
    if not raw:
        return f"sqlite:///{var_dir / 'hashwork.sqlite3'}", True
    parts = urlsplit(raw)
    if parts.scheme not in _DB_SCHEMES:
        problems.append(
            f"DATABASE_URL has scheme {parts.scheme!r}; use postgres://USER@HOST:PORT/NAME "
            "or sqlite:////absolute/path.sqlite3."
        )
    elif parts.scheme != "sqlite" and not parts.path.strip("/"):
        problems.append("DATABASE_URL names no database: add /NAME at the end.")
    return raw, False


def _redis_url(env: Mapping[str, str], problems: list[str]) -> str | None:
    raw = env.get("REDIS_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in _REDIS_SCHEMES:
        problems.append(f"REDIS_URL has scheme {parts.scheme!r}; use redis://[:PASSWORD@]HOST:PORT/DB.")
        return None
    if parts.scheme != "unix":
        if not parts.hostname:
            problems.append("REDIS_URL names no host.")
        try:
            _ = parts.port
        except ValueError:
            problems.append("REDIS_URL has a port that is not a number.")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            problems.append(f"REDIS_URL database {db!r} is not a number.")
    return raw


def _node_broker_url(env: Mapping[str, str], problems: list[str]) -> str | None:
    raw = env.get("NODE_BROKER_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        problems.append(f"NODE_BROKER_URL={raw!r} is not a redis:// or rediss:// URL (host and port nodes reach).")
    elif parts.username or parts.password:
        problems.append("NODE_BROKER_URL must carry no credentials: each node gets its own at enrolment.")
    return raw


def _eth_rpc_url(env: Mapping[str, str], problems: list[str], name: str = "ETH_RPC_URL") -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.hostname:
        problems.append(f"{name}={raw!r} is not an http(s) or ws(s) URL of an Ethereum JSON-RPC node.")
    return raw


def _artifact_limits(env: Mapping[str, str], problems: list[str]) -> dict[str, int]:
    raw = env.get("HASHWORK_ARTIFACT_LIMITS", "").strip()
    limits: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kind, _, size = item.partition("=")
        if not kind.strip() or not size.strip().isdigit() or int(size) < 1:
            problems.append(f"HASHWORK_ARTIFACT_LIMITS entry {item!r} is not KIND=BYTES (e.g. render=268435456).")
            continue
        limits[kind.strip()] = int(size)
    return limits


def _operator_key(env: Mapping[str, str], problems: list[str]) -> str | None:
    raw = env.get("OPERATOR_KEY", "").strip()
    key_file = env.get("OPERATOR_KEY_FILE", "").strip()
    if raw and key_file:
        problems.append("OPERATOR_KEY and OPERATOR_KEY_FILE are both set: set one of them.")
        return None
    if key_file:
        try:
            raw = Path(key_file).read_text().strip()
        except OSError as exc:
            problems.append(f"OPERATOR_KEY_FILE={key_file!r} cannot be read ({exc.strerror}).")
            return None
    if not raw:
        return None
    # The key itself is never echoed back, not even in an error.
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", raw):
        name = "OPERATOR_KEY_FILE's content" if key_file else "OPERATOR_KEY"
        problems.append(f"{name} is not a private key (0x followed by 64 hex digits).")
        return None
    return raw if raw.startswith("0x") else f"0x{raw}"


def _allowed_hosts(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    raw = env.get("ALLOWED_HOSTS")
    if raw is None:
        return ("localhost", "127.0.0.1", "[::1]")
    hosts = tuple(h.strip() for h in raw.split(",") if h.strip())
    if not hosts:
        problems.append("ALLOWED_HOSTS is empty; list host names separated by commas.")
    for host in hosts:
        if not _HOST_RE.match(host):
            problems.append(f"ALLOWED_HOSTS entry {host!r} is not a host name.")
    return hosts


def _s3(env: Mapping[str, str], problems: list[str]) -> S3Config | None:
    bucket = env.get("S3_BUCKET", "").strip()
    if not bucket:
        for name in ("S3_ENDPOINT_URL", "S3_REGION", "S3_CUSTOM_DOMAIN"):
            if env.get(name):
                problems.append(f"{name} is set but S3_BUCKET is not; set S3_BUCKET to store media on S3.")
        return None
    endpoint = env.get("S3_ENDPOINT_URL", "").strip() or None
    if endpoint and urlsplit(endpoint).scheme not in {"http", "https"}:
        problems.append(f"S3_ENDPOINT_URL={endpoint!r} is not an http(s) URL.")
    if importlib.util.find_spec("boto3") is None:
        problems.append("S3_BUCKET is set but boto3 is not installed: pip install -e '.[s3]'.")
    return S3Config(
        bucket=bucket,
        endpoint_url=endpoint,
        region=env.get("S3_REGION", "").strip() or None,
        custom_domain=env.get("S3_CUSTOM_DOMAIN", "").strip() or None,
    )


def load(env: Mapping[str, str], base_dir: Path) -> Config:
    """Read the configuration from `env`; raise ConfigError naming every invalid variable."""
    problems: list[str] = []
    var_dir = Path(env.get("HASHWORK_VAR_DIR", "").strip() or base_dir / "var").resolve()
    debug = _bool(env, "DEBUG", False, problems)
    database_url, database_is_embedded = _database_url(env, var_dir, problems)
    redis_url = _redis_url(env, problems)
    prefix = env.get("HASHWORK_REDIS_PREFIX", "hashwork:")
    if not _PREFIX_RE.match(prefix):
        problems.append(
            f"HASHWORK_REDIS_PREFIX={prefix!r} must be 1-48 letters, digits, '.', '_' or '-' followed by ':'."
        )
    media_raw = env.get("MEDIA_ROOT", "").strip()
    media_root = Path(media_raw).resolve() if media_raw else var_dir / "media"
    config = Config(
        base_dir=base_dir,
        var_dir=var_dir,
        debug=debug,
        secret_key=_secret_key(env, var_dir, problems),
        allowed_hosts=_allowed_hosts(env, problems),
        database_url=database_url,
        database_is_embedded=database_is_embedded,
        redis_url=redis_url,
        redis_prefix=prefix,
        media_root=media_root,
        s3=_s3(env, problems),
        node_online_seconds=_int(env, "NODE_ONLINE_SECONDS", 90, problems),
        job_default_deadline_hours=_int(env, "JOB_DEFAULT_DEADLINE_HOURS", 168, problems),
        dev_funding=_bool(env, "HASHWORK_DEV_FUNDING", database_is_embedded or debug, problems),
        eth_rpc_url=_eth_rpc_url(env, problems),
        node_broker_url=_node_broker_url(env, problems),
        lease_seconds=_int(env, "HASHWORK_LEASE_SECONDS", 0, problems, minimum=1) or None,
        start_window_seconds=_int(env, "HASHWORK_START_WINDOW_SECONDS", 0, problems, minimum=1) or None,
        artifact_limits=_artifact_limits(env, problems),
        operator_key=_operator_key(env, problems),
        chain_confirmations=_int(env, "CHAIN_CONFIRMATIONS", 0, problems, minimum=0),
        public_eth_rpc_url=_eth_rpc_url(env, problems, "PUBLIC_ETH_RPC_URL"),
        escrow_margin_hours=_int(env, "HASHWORK_ESCROW_MARGIN_HOURS", 24, problems, minimum=0),
        trusted_proxies=tuple(p.strip() for p in env.get("HASHWORK_TRUSTED_PROXIES", "").split(",") if p.strip()),
        replication_p=_probability(env, "HASHWORK_REPLICATION_P", 0.1, problems),
        train_quorum=_probability(env, "HASHWORK_TRAIN_QUORUM", 2 / 3, problems),
        train_replay_share=_probability(env, "HASHWORK_TRAIN_REPLAY_SHARE", 0.25, problems),
        tx_bump_seconds=_int(env, "HASHWORK_TX_BUMP_SECONDS", 60, problems),
        tx_max_bumps=_int(env, "HASHWORK_TX_MAX_BUMPS", 4, problems, minimum=0),
        log_block_range=_int(env, "HASHWORK_LOG_BLOCK_RANGE", 2000, problems),
    )
    if problems:
        raise ConfigError(problems)
    return config
