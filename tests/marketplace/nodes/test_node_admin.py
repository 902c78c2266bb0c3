"""The admin's node list: the marketplace operator's view of every node's worker (Flower sees only the
marketplace's own workers; node workers send no Celery events)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from tests.factories import NodeFactory

pytestmark = pytest.mark.django_db


def test_the_node_list_shows_whether_each_nodes_worker_consumes_and_why_not() -> None:
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "a-long-Passphrase-9")
    now = timezone.now()
    NodeFactory(name="consumer", last_heartbeat=now, broker_ok=True, slots=2, busy_slots=1)
    NodeFactory(
        name="lost-user", last_heartbeat=now, broker_ok=False, broker_error="NOPERM this user has no permissions"
    )
    NodeFactory(name="gone", last_heartbeat=now - timedelta(hours=1))
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/nodes/node/")
    assert page.status_code == 200
    text = page.content.decode()
    for name in ("consumer", "lost-user", "gone"):
        assert name in text
    assert text.count("consuming") >= 2  # one of them "not consuming"
    assert "1/2" in text
    assert "not consuming: NOPERM this user has no permissions" in text
    # Filtered to the workers that do not consume: the one to look at.
    broken = client.get("/admin/nodes/node/?broker_ok__exact=0").content.decode()
    assert "lost-user" in broken
    assert "consumer" not in broken
