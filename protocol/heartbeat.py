"""The agent's heartbeat (POST /api/nodes/heartbeat/) and the marketplace's reply."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, StrictBool, StringConstraints

from protocol.base import PROTOCOL, Message

BROKER_ERROR_MAX = 500


class Progress(Message):
    """How far a running assignment is: `done` of `total` steps (images, training steps)."""

    what: ClassVar[str] = "progress"

    done: int
    total: int


class BrokerHealth(Message):
    """Whether the agent's Celery worker is connected to the broker and consuming its queue; if not, the last
    connection error (WRONGPASS after a Redis restart lost the node's user, connection refused while it is down)."""

    what: ClassVar[str] = "broker health"

    ok: StrictBool
    error: Annotated[str, StringConstraints(max_length=BROKER_ERROR_MAX)] = ""


class Heartbeat(Message):
    """The node is alive: what it offers, how much room it has, and what it runs now."""

    what: ClassVar[str] = "heartbeat"

    # Sent so that the marketplace can tell agent versions apart; nothing checks it yet (older agents send none).
    protocol: str = PROTOCOL
    capabilities: dict[str, Any] | None = None
    free_slots: int
    accepting: bool = True
    load: float | None = None
    running: list[str] = Field(default_factory=list)
    progress: dict[str, Progress] = Field(default_factory=dict)
    # None from agents older than the report: the marketplace takes their worker as consuming, as it did before.
    broker: BrokerHealth | None = None

    def to_json(self) -> dict[str, Any]:
        """The request body; fields left unset (None) are left out, as the API takes them as optional, not null."""
        return {key: value for key, value in super().to_json().items() if value is not None}


class HeartbeatReply(Message):
    """What the marketplace answers: the node's record, assignments to stop, and whether to withdraw now."""

    what: ClassVar[str] = "heartbeat reply"

    node: dict[str, Any] = Field(default_factory=dict)
    revoked: list[str] = Field(default_factory=list)
    withdraw: bool = False
