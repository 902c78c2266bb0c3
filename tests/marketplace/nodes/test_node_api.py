"""Node enrolment and heartbeats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from marketplace.nodes.authentication import token_hash
from marketplace.nodes.models import Node, NodeReputation

pytestmark = pytest.mark.django_db

ENROL = {
    "name": "garage-rig",
    "wallet_address": "0x" + "Ab" * 20,
    "capabilities": {"cpu_cores": 8, "ram_mb": 32000, "gpus": [{"name": "RTX 3080", "vram_mb": 10240}]},
    "slots": 2,
    "min_price": {"benchmark": "1000"},
}


def test_an_operator_enrols_a_node_and_gets_its_token_once(operator: Any) -> None:
    response = operator.client.post("/api/nodes/enroll/", ENROL, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    node = Node.objects.get(id=body["node"]["id"])
    assert node.operator == operator.user
    assert node.wallet_address == ENROL["wallet_address"].lower()
    assert node.token_hash == token_hash(body["token"])
    assert body["token"] not in str(Node.objects.values().get())
    assert node.min_price == {"benchmark": "1000"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"wallet_address": "0x1234"}, "wallet_address"),
        ({"wallet_address": "0x" + "zz" * 20}, "wallet_address"),
        ({"name": ""}, "name"),
        ({"name": "rig with spaces"}, "name"),
        ({"slots": 0}, "slots"),
        ({"slots": 65}, "slots"),
        ({"min_price": {"mining": "5"}}, "min_price.mining"),
        ({"min_price": {"benchmark": "-5"}}, "min_price.benchmark"),
        ({"min_price": {"benchmark": 1.5}}, "min_price.benchmark"),
        ({"capabilities": ["gpu"]}, "capabilities"),
    ],
)
def test_bad_enrolment_input_is_named_and_no_node_is_created(
    operator: Any, changes: dict[str, Any], field: str
) -> None:
    response = operator.client.post("/api/nodes/enroll/", {**ENROL, **changes}, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["extra"]["fields"]
    assert not Node.objects.exists()


def test_enrolling_two_nodes_with_one_name_is_refused(operator: Any) -> None:
    assert operator.client.post("/api/nodes/enroll/", ENROL, format="json").status_code == 201
    response = operator.client.post("/api/nodes/enroll/", ENROL, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["extra"]["fields"]
    assert Node.objects.count() == 1


def test_a_heartbeat_makes_the_node_online_and_updates_its_capabilities(node: Any) -> None:
    Node.objects.filter(id=node.node.id).update(last_heartbeat=None)
    response = node.client.post(
        "/api/nodes/heartbeat/", {"free_slots": 1, "capabilities": {"cpu_cores": 4}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["node"]["is_online"] is True
    assert response.json()["revoked"] == []
    refreshed = Node.objects.get(id=node.node.id)
    assert refreshed.is_online
    assert refreshed.capabilities == {"cpu_cores": 4}


def test_a_heartbeat_with_more_free_slots_than_the_node_has_is_refused(node: Any) -> None:
    response = node.client.post("/api/nodes/heartbeat/", {"free_slots": 5}, format="json")
    assert response.status_code == 400
    assert "free_slots" in response.json()["extra"]["fields"]


def test_a_node_without_heartbeats_is_offline(node: Any, settings: Any) -> None:
    Node.objects.filter(id=node.node.id).update(last_heartbeat=None)
    assert not Node.objects.get(id=node.node.id).is_online


def test_a_node_sees_its_decayed_reputation_per_kind(node: Any) -> None:
    assert node.client.get("/api/nodes/me/").json()["reputation"] == {}
    half_life = timedelta(days=14)  # REPUTATION_HALF_LIFE_DAYS
    NodeReputation.objects.create(node=node.node, kind="render", score=8, updated_at=timezone.now() - half_life)
    NodeReputation.objects.create(node=node.node, kind="benchmark", score=3)
    assert node.client.get("/api/nodes/me/").json()["reputation"] == {"benchmark": 3.0, "render": 4.0}
