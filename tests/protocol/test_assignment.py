"""The assignment message and the payloads of each kind: round trips, the version check and errors that name fields."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    PROTOCOL,
    AssignmentMessage,
    BenchmarkPayload,
    Message,
    ProtocolError,
    RenderPayload,
    TrainHyper,
    TrainPayload,
)
from tests.protocol.messages import an_assignment

# What the marketplace sent before the protocol existed: the agents already deployed read these names.
FIELDS_BEFORE = {
    "assignment_id",
    "job_id",
    "task_index",
    "kind",
    "payload",
    "input_urls",
    "time_limit_seconds",
    "start_by",
    "lease_expires_at",
}


def test_an_assignment_message_survives_a_round_trip() -> None:
    message = an_assignment()
    assert AssignmentMessage.from_json(message.to_json()) == message


def test_its_json_keeps_the_old_field_names_and_adds_only_the_protocol_version_and_gpus() -> None:
    body = an_assignment().to_json()
    assert set(body) == FIELDS_BEFORE | {"protocol", "gpus"}
    assert body["gpus"] == 0
    assert body["protocol"] == PROTOCOL == "hashwork-protocol/1"
    [item] = body["input_urls"]
    assert item == {"path": "models/widget.glb", "url": "/api/assignments/x/inputs/y/", "sha256": "ab" * 32}


def test_a_message_without_gpus_asks_for_none_and_a_bad_count_is_refused_by_name() -> None:
    body = an_assignment().to_json()
    del body["gpus"]  # what a marketplace sent before the field existed
    assert AssignmentMessage.from_json(body).gpus == 0
    for bad in (-1, 65, "all"):
        with pytest.raises(ProtocolError, match="gpus"):
            AssignmentMessage.from_json({**body, "gpus": bad})


def test_times_are_written_as_isoformat_as_before() -> None:
    message = an_assignment()
    assert message.to_json()["start_by"] == message.start_by.isoformat() == "2026-01-02T03:05:05.678901+00:00"


def test_an_old_agent_gets_an_upgrade_error() -> None:
    body = {**an_assignment().to_json(), "protocol": "hashwork-protocol/2", "task_index": "no longer a number"}
    with pytest.raises(ProtocolError) as error:
        AssignmentMessage.from_json(body)
    text = str(error.value)
    assert "'hashwork-protocol/2'" in text
    assert "this node agent speaks 'hashwork-protocol/1'" in text
    assert "Upgrade the node agent" in text
    assert "git pull && make install" in text
    assert "docker/nodeagent.Dockerfile" in text
    # The marketplace keeps 500 characters of a failure's reason: the whole text must fit.
    assert len(text) < 500


def test_a_message_without_a_protocol_version_gets_an_upgrade_error() -> None:
    body = an_assignment().to_json()
    del body["protocol"]
    with pytest.raises(ProtocolError, match=r"without a protocol version.*Upgrade the node agent"):
        AssignmentMessage.from_json(body)


def test_a_missing_field_is_named_not_a_key_error() -> None:
    body = an_assignment().to_json()
    del body["kind"]
    del body["input_urls"][0]["sha256"]
    with pytest.raises(ProtocolError) as error:
        AssignmentMessage.from_json(body)
    assert str(error.value) == "assignment message: missing field 'kind'; missing field 'input_urls.0.sha256'"


def test_a_field_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ProtocolError, match="field 'time_limit_seconds': Input should be a valid integer"):
        AssignmentMessage.from_json({**an_assignment().to_json(), "time_limit_seconds": "soon"})


@pytest.mark.parametrize("body", [None, [], "assignment", 3])
def test_a_message_that_is_not_an_object_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(ProtocolError, match="assignment message: expected a JSON object"):
        AssignmentMessage.from_json(body)


def test_fields_a_later_release_adds_are_ignored() -> None:
    message = an_assignment()
    assert AssignmentMessage.from_json({**message.to_json(), "priority": 7}) == message


def test_a_message_without_input_files_has_none() -> None:
    body = an_assignment().to_json()
    del body["input_urls"]
    assert AssignmentMessage.from_json(body).input_urls == []


TRAIN = TrainPayload(
    job_id="5b7e2c1a-9f43-4e8b-a2d6-3c4b5a6d7e8f",
    round=2,
    participant=1,
    model="smallcnn",
    num_classes=3,
    image_size=32,
    local_steps=20,
    seed=7,
    hyper=TrainHyper(batch_size=16, optimizer="adam", lr=0.001),
    compression={"name": "topk", "topk_fraction": 0.05, "rank": 4},
)


@pytest.mark.parametrize(
    "payload",
    [
        BenchmarkPayload(matrix_size=256, seed=1, index=0),
        RenderPayload(spec={"images": 8, "seed": None, "scene": {"objects": [1, 2]}}, start=4, count=4),
        TRAIN,
    ],
    ids=["benchmark", "render", "train"],
)
def test_each_kinds_payload_survives_a_round_trip(payload: Message) -> None:
    assert type(payload).from_json(payload.to_json()) == payload


def test_the_train_payload_keeps_the_field_names_the_runner_read_before() -> None:
    body = TRAIN.to_json()
    assert body["hyper"] == {"batch_size": 16, "optimizer": "adam", "lr": 0.001}
    assert set(body) == {
        "job_id", "round", "participant", "model", "num_classes", "image_size", "local_steps", "seed", "hyper",
        "compression",
    }  # fmt: skip


def test_hyperparameters_the_marketplace_leaves_out_take_the_protocols_defaults() -> None:
    body = {**TRAIN.to_json(), "hyper": {"lr": 0.2}}
    del body["compression"]
    payload = TrainPayload.from_json(body)
    assert payload.hyper == TrainHyper(batch_size=32, optimizer="sgd", lr=0.2)
    assert payload.compression == {}
    del body["hyper"]
    assert TrainPayload.from_json(body).hyper == TrainHyper()


def test_an_unknown_optimizer_is_refused_by_name() -> None:
    with pytest.raises(ProtocolError, match=r"train payload: field 'hyper\.optimizer'"):
        TrainPayload.from_json({**TRAIN.to_json(), "hyper": {"optimizer": "lbfgs"}})


def test_a_payload_missing_a_field_names_it() -> None:
    with pytest.raises(ProtocolError, match=r"^benchmark payload: missing field 'seed'$"):
        BenchmarkPayload.from_json({"matrix_size": 16, "index": 0})
