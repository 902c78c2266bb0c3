"""The heartbeat and its reply: round trips, and the real marketplace API taking what the agent sends."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from protocol import PROTOCOL, Heartbeat, HeartbeatReply, Progress, ProtocolError

BEAT = Heartbeat(
    capabilities={"gpus": [{"index": 0, "temperature_c": None}], "cpu_cores": 2},
    free_slots=1,
    accepting=True,
    load=0.5,
    running=["8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b10"],
    progress={"8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b10": Progress(done=3, total=8)},
)


def test_a_heartbeat_survives_a_round_trip() -> None:
    assert Heartbeat.from_json(BEAT.to_json()) == BEAT
    assert BEAT.to_json()["protocol"] == PROTOCOL


def test_fields_left_unset_are_left_out_not_sent_as_null() -> None:
    body = Heartbeat(free_slots=0).to_json()
    assert "load" not in body
    assert "capabilities" not in body
    # A capability that is unknown (None) is still sent: only top-level fields are dropped.
    assert BEAT.to_json()["capabilities"]["gpus"][0]["temperature_c"] is None


def test_a_reply_survives_a_round_trip_and_an_empty_one_asks_for_nothing() -> None:
    reply = HeartbeatReply(node={"id": "n1"}, revoked=["a1"], withdraw=True)
    assert HeartbeatReply.from_json(reply.to_json()) == reply
    assert HeartbeatReply.from_json({}) == HeartbeatReply(node={}, revoked=[], withdraw=False)


def test_an_unreadable_reply_names_the_field() -> None:
    with pytest.raises(ProtocolError, match="heartbeat reply: field 'revoked'"):
        HeartbeatReply.from_json({"revoked": "all"})


@pytest.mark.django_db
def test_the_marketplace_takes_the_agents_heartbeat_and_the_agent_reads_its_reply(node: Any) -> None:
    stale = str(uuid4())
    beat = Heartbeat(
        capabilities=BEAT.capabilities,
        free_slots=1,
        load=0.25,
        running=[stale],
        progress={stale: Progress(done=1, total=4)},
    )
    response = node.client.post("/api/nodes/heartbeat/", beat.to_json(), format="json")
    assert response.status_code == 200, response.json()
    reply = HeartbeatReply.from_json(response.json())
    assert reply.node["id"] == str(node.node.id)
    # The node reported an assignment it does not hold: the marketplace tells it to stop it.
    assert reply.revoked == [stale]
    assert reply.withdraw is False


@pytest.mark.django_db
def test_an_agent_of_another_protocol_version_is_told_to_upgrade_and_nothing_is_recorded(node: Any) -> None:
    before = node.node.last_heartbeat
    body = {**Heartbeat(free_slots=1).to_json(), "protocol": "hashwork-protocol/0"}
    response = node.client.post("/api/nodes/heartbeat/", body, format="json")
    assert response.status_code == 400
    message = response.json()["extra"]["fields"]["protocol"][0]
    assert "hashwork-protocol/0" in message
    assert "Upgrade the node agent" in message
    node.node.refresh_from_db()
    assert node.node.last_heartbeat == before


@pytest.mark.django_db
def test_an_agent_from_before_the_versioned_protocol_still_beats(node: Any) -> None:
    body = {k: v for k, v in Heartbeat(free_slots=1).to_json().items() if k != "protocol"}
    response = node.client.post("/api/nodes/heartbeat/", body, format="json")
    assert response.status_code == 200, response.json()
