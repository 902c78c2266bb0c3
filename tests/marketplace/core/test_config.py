"""Settings come from the environment and a bad value stops start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace import config

ROOT = Path(__file__).resolve().parents[3]


def _load(tmp_path: Path, **env: str) -> config.Config:
    return config.load({"HASHWORK_VAR_DIR": str(tmp_path), **env}, ROOT)


def test_defaults_are_embedded_sqlite_and_embedded_redis(tmp_path: Path) -> None:
    cfg = _load(tmp_path)
    assert cfg.database_url == f"sqlite:///{tmp_path / 'hashwork.sqlite3'}"
    assert cfg.database_is_embedded
    assert cfg.redis_url is None
    assert cfg.media_root == tmp_path / "media"
    assert cfg.debug is False
    assert cfg.s3 is None


def test_without_secret_key_a_random_one_is_kept_under_var(tmp_path: Path) -> None:
    first = _load(tmp_path).secret_key
    assert len(first) >= config.MIN_SECRET_KEY_LENGTH
    assert _load(tmp_path).secret_key == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_configured_services_are_used(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/3",
        DEBUG="true",
        ALLOWED_HOSTS="hashwork.example, .hashwork.example",
    )
    assert not cfg.database_is_embedded
    assert cfg.redis_url == "redis://127.0.0.1:6379/3"
    assert cfg.debug is True
    assert cfg.allowed_hosts == ("hashwork.example", ".hashwork.example")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/test"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("REDIS_URL", "redis://127.0.0.1:6379/zero"),
        ("DEBUG", "maybe"),
        ("SECRET_KEY", "short"),
        ("ALLOWED_HOSTS", " , "),
        ("ALLOWED_HOSTS", "bad host!"),
        ("HASHWORK_REDIS_PREFIX", "no-colon"),
        ("HASHWORK_REDIS_PREFIX", "has space:"),
        ("NODE_ONLINE_SECONDS", "ninety"),
        ("NODE_ONLINE_SECONDS", "0"),
        ("JOB_DEFAULT_DEADLINE_HOURS", "-1"),
        ("HASHWORK_DEV_FUNDING", "perhaps"),
        ("S3_ENDPOINT_URL", "https://s3.example"),
        ("ETH_RPC_URL", "localhost:8545"),
        ("ETH_RPC_URL", "ftp://chain.example"),
        ("PUBLIC_ETH_RPC_URL", "chain.example:8545"),
        ("OPERATOR_KEY", "0x1234"),
        ("OPERATOR_KEY_FILE", "/nonexistent/operator.key"),
        ("CHAIN_CONFIRMATIONS", "-1"),
        ("HASHWORK_REPLICATION_P", "1.5"),
        ("HASHWORK_REPLICATION_P", "often"),
    ],
)
def test_a_bad_value_is_refused_with_its_name(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        _load(tmp_path, **{name: value})
    assert name in str(refused.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as refused:
        _load(tmp_path, DEBUG="maybe", REDIS_URL="http://x")
    assert len(refused.value.problems) == 2


def test_s3_media_needs_boto3(tmp_path: Path) -> None:
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(config.ConfigError, match="S3_BUCKET"):
            _load(tmp_path, S3_BUCKET="datasets")
    else:
        assert _load(tmp_path, S3_BUCKET="datasets").s3 == config.S3Config("datasets", None, None, None)


def test_a_bad_value_stops_manage_py_with_a_message_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "HASHWORK_VAR_DIR": str(tmp_path), "DATABASE_URL": "mongodb://localhost/x"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_operator_key_is_never_echoed_in_an_error(tmp_path: Path) -> None:
    secret = "0x" + "ab" * 31  # one byte short: invalid
    with pytest.raises(config.ConfigError) as refused:
        _load(tmp_path, OPERATOR_KEY=secret)
    assert secret not in str(refused.value)
    assert "OPERATOR_KEY" in str(refused.value)


def test_the_operator_key_can_come_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "operator.key"
    key_file.write_text("cd" * 32 + "\n")
    assert _load(tmp_path, OPERATOR_KEY_FILE=str(key_file)).operator_key == "0x" + "cd" * 32
