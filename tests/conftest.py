"""Persona fixtures (a poster, a node operator, a stranger) and API clients, for the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from marketplace.celery import use_broker
from marketplace.core import embedded_redis
from marketplace.nodes.authentication import token_new
from marketplace.nodes.models import Node
from nodeagent.signer import Wallet
from tests.factories import NodeFactory, UserFactory

# The suite's node agents fork their runners (what they test is the market, not the sandbox, and a container per
# assignment would add about a second to each): tests/nodeagent/test_sandbox.py and tests/e2e/test_train.py's
# first test run theirs in the Docker sandbox explicitly (NODEAGENT_SANDBOX=docker).
os.environ.setdefault("NODEAGENT_SANDBOX", "none")


def pytest_report_header(config: pytest.Config) -> list[str]:
    db = settings.DATABASES["default"]
    redis = settings.REDIS_URL.split("@")[-1] if settings.REDIS_URL else "embedded (started by the tests)"
    sandbox = f"node agents' sandbox: {os.environ['NODEAGENT_SANDBOX']} unless a test says otherwise"
    return [f"hashwork: database {db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}; redis {redis}; {sandbox}"]


@pytest.fixture(scope="session", autouse=True)
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis of this run: REDIS_URL (the machine's) when set, else an embedded one for the session."""
    if settings.REDIS_URL:
        yield settings.REDIS_URL
        # A shared server keeps nothing of ours: drop this run's keys (its prefix is unique to the run).
        if settings.REDIS_PREFIX.startswith("test-"):
            client = redis.Redis.from_url(settings.REDIS_URL)
            for key in client.scan_iter(match=f"{settings.REDIS_PREFIX}*", count=500):
                client.delete(key)
            node_users = f"{settings.REDIS_PREFIX.rstrip(':')}.node."
            for user in client.execute_command("ACL", "USERS"):
                name = user.decode() if isinstance(user, bytes) else user
                if name.startswith(node_users):
                    client.execute_command("ACL", "DELUSER", name)
        return
    var_dir = tmp_path_factory.mktemp("redis-var")
    server, _ = embedded_redis.start(var_dir)
    settings.REDIS_URL = server.url
    use_broker(server.url)
    try:
        yield server.url
    finally:
        embedded_redis.stop(var_dir)


def _client(token: str | None = None, scheme: str = "Token") -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
    return client


@dataclass
class Persona:
    user: Any
    client: APIClient


@dataclass
class NodePersona:
    node: Node
    token: str
    client: APIClient
    wallet: Wallet


@pytest.fixture
def anonymous() -> APIClient:
    return _client()


@pytest.fixture
def poster(db: None) -> Persona:
    user = UserFactory(username="poster")
    return Persona(user, _client(user.auth_token.key))


@pytest.fixture
def operator(db: None) -> Persona:
    user = UserFactory(username="operator")
    return Persona(user, _client(user.auth_token.key))


@pytest.fixture
def stranger(db: None) -> Persona:
    """Someone who must see nothing of the poster's jobs or the operator's nodes."""
    user = UserFactory(username="stranger")
    return Persona(user, _client(user.auth_token.key))


def make_node(operator: Any, **kwargs: Any) -> NodePersona:
    token, digest = token_new()
    wallet = Wallet.create()
    node = NodeFactory(operator=operator, token_hash=digest, wallet_address=wallet.address.lower(), **kwargs)
    return NodePersona(node, token, _client(token, scheme="Node"), wallet)


@pytest.fixture
def node(operator: Persona) -> NodePersona:
    return make_node(operator.user, name="rig-a")


@pytest.fixture
def other_node(stranger: Persona) -> NodePersona:
    return make_node(stranger.user, name="rig-b")


@pytest.fixture
def dev_funding(settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "DEV_FUNDING": True}
