"""The typed, versioned messages the marketplace and the node agent exchange (one definition for both sides)."""

from __future__ import annotations

from protocol.assignment import (
    AssignmentMessage,
    BenchmarkPayload,
    InputFile,
    RenderPayload,
    TrainHyper,
    TrainPayload,
)
from protocol.base import PROTOCOL, UPGRADE, Message, ProtocolError
from protocol.heartbeat import BrokerHealth, Heartbeat, HeartbeatReply, Progress
from protocol.signing import result_message

__all__ = [
    "PROTOCOL",
    "UPGRADE",
    "AssignmentMessage",
    "BenchmarkPayload",
    "BrokerHealth",
    "Heartbeat",
    "HeartbeatReply",
    "InputFile",
    "Message",
    "Progress",
    "ProtocolError",
    "RenderPayload",
    "TrainHyper",
    "TrainPayload",
    "result_message",
]
