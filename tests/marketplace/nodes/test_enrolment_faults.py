"""Enrolment talks to Redis outside any transaction: when Redis refuses the node's broker user, the enrolment
fails with Redis's error and leaves no node behind; the honest path makes both."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings

from marketplace.core import redis_admin
from marketplace.nodes import broker, services
from marketplace.nodes.models import Node
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _enroll(name: str) -> services.Enrolment:
    return services.node_enroll(
        operator=UserFactory(), name=name, wallet_address="0x" + "2" * 40, capabilities={}, slots=1, min_price={}
    )


@pytest.fixture
def redis_without_acl_rights(redis_url: str) -> Iterator[None]:
    """The marketplace's Redis connection as a real Redis user who may not manage ACL users."""
    admin = redis.Redis.from_url(redis_url)
    username, password = f"{settings.REDIS_PREFIX.rstrip(':')}.limited", secrets.token_urlsafe(16)
    admin.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}", "~*", "&*", "+@all", "-@admin")
    parts = urlsplit(redis_url)
    netloc = f"{username}:{password}@{parts.hostname}:{parts.port}"
    original = settings.REDIS_URL
    settings.REDIS_URL = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    redis_admin._admin.clear()
    try:
        yield
    finally:
        settings.REDIS_URL = original
        redis_admin._admin.clear()
        admin.execute_command("ACL", "DELUSER", username)


def test_a_refused_broker_user_leaves_no_node_behind(redis_without_acl_rights: None) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        _enroll("refused")
    assert not Node.objects.filter(name="refused").exists()


def test_an_enrolment_makes_the_node_and_its_broker_user() -> None:
    enrolment = _enroll("honest")
    try:
        node = Node.objects.get(name="honest")
        assert node.broker_username == broker.node_username(node.id)
        users = [u.decode() if isinstance(u, bytes) else u for u in redis_admin.admin_client().acl_users()]
        assert node.broker_username in users
    finally:
        broker.broker_user_delete(username=enrolment.node.broker_username)
