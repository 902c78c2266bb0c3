"""Protocol messages for tests: a valid assignment message with any field changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from protocol import AssignmentMessage, InputFile


def an_assignment(**changes: Any) -> AssignmentMessage:
    """A benchmark assignment leased just now; keyword arguments replace its fields."""
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    fields: dict[str, Any] = {
        "assignment_id": "8d0f6a4e-2b1c-4c39-9d55-0f3f1d2a7b10",
        "job_id": "5b7e2c1a-9f43-4e8b-a2d6-3c4b5a6d7e8f",
        "task_index": 3,
        "kind": "benchmark",
        "payload": {"matrix_size": 16, "seed": 1, "index": 3},
        "input_urls": [InputFile(path="models/widget.glb", url="/api/assignments/x/inputs/y/", sha256="ab" * 32)],
        "time_limit_seconds": 300,
        "start_by": now + timedelta(seconds=60),
        "lease_expires_at": now + timedelta(seconds=600),
    }
    fields.update(changes)
    return AssignmentMessage(**fields)
