"""The assignment message the marketplace publishes to a node, and the typed payload of each job kind."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, field_serializer

from protocol.base import PROTOCOL, Message, check_version


class InputFile(Message):
    """A file the runner needs, fetched into WORKDIR/inputs/<path> and checked against its sha256."""

    what: ClassVar[str] = "input file"

    path: str
    url: str
    sha256: str


class AssignmentMessage(Message):
    """One replica of one task, leased to one node (the argument of the agent's Celery task)."""

    what: ClassVar[str] = "assignment message"

    protocol: Literal["hashwork-protocol/1"] = PROTOCOL
    assignment_id: str
    job_id: str
    task_index: int
    kind: str
    # Read by the kind's runner with its payload class (BenchmarkPayload...); kept as JSON here so that the
    # worker can hand it to a runner of any kind, including one this protocol does not know.
    payload: dict[str, Any]
    input_urls: list[InputFile] = Field(default_factory=list)
    time_limit_seconds: int
    # GPUs the task asks for (its requirements' `gpus`): the agent's Docker sandbox passes exactly this many to the
    # container, and none when 0. An older marketplace sends no such field: 0.
    gpus: int = Field(default=0, ge=0, le=64)
    start_by: datetime
    lease_expires_at: datetime

    @field_serializer("start_by", "lease_expires_at")
    def _isoformat(self, value: datetime) -> str:
        # datetime.isoformat(), as before the protocol existed: "+00:00", where pydantic would write "Z".
        return value.isoformat()

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Read a message; one of another protocol version raises ProtocolError saying how to upgrade."""
        if isinstance(data, Mapping):
            check_version(cls.what, data)
        return super().from_json(data)


class BenchmarkPayload(Message):
    """Task `index` of a benchmark job: multiply two seeded float64 matrices of side `matrix_size`."""

    what: ClassVar[str] = "benchmark payload"

    matrix_size: int
    seed: int
    index: int


class RenderPayload(Message):
    """Images [start, start + count) of a synthetic render spec (synthetic.spec validates `spec`)."""

    what: ClassVar[str] = "render payload"

    spec: dict[str, Any]
    start: int
    count: int


class TrainHyper(Message):
    """Local optimiser settings of a train round; the defaults are the protocol's, stated here only."""

    what: ClassVar[str] = "train hyperparameters"

    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05


class TrainPayload(Message):
    """One participant's local training in one round of a federated train job."""

    what: ClassVar[str] = "train payload"

    job_id: str
    round: int
    participant: int
    model: str
    num_classes: int
    image_size: int
    local_steps: int
    seed: int
    hyper: TrainHyper = Field(default_factory=TrainHyper)
    # training.compress.CompressionSpec's fields; training validates them and owns their defaults.
    compression: dict[str, Any] = Field(default_factory=dict)
