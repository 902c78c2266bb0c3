"""Whether a node can take a task: its reported capabilities against the task's requirements, its minimum price
against the job's. Total functions: a malformed node record satisfies nothing it cannot prove, never raises."""

from __future__ import annotations

from typing import Any

from marketplace.jobs.models import Job
from marketplace.nodes.models import Node

__all__ = ["capabilities_satisfy", "price_ok"]


def _count(value: Any) -> int:
    """A whole number from a stored record, 0 when it is none: a record from before validation at the edge (or
    written by hand) never raises inside the scheduler."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def capabilities_satisfy(requirements: dict[str, Any], capabilities: dict[str, Any]) -> bool:
    """Whether a node reporting `capabilities` (nodeagent probe; checked by protocol.Capabilities at the API) can
    run a task needing `requirements`. Total: a malformed record satisfies nothing it cannot prove."""
    if not isinstance(capabilities, dict):
        return False
    gpus_needed = _count(requirements.get("gpus"))
    if gpus_needed:
        min_vram = _count(requirements.get("min_vram_mb"))
        reported = capabilities.get("gpus")
        listed = [g for g in reported if isinstance(g, dict)] if isinstance(reported, list) else []
        gpus = [g for g in listed if _count(g.get("vram_mb")) >= min_vram]
        cap = capabilities.get("max_gpus")
        usable = len(gpus) if cap is None else min(len(gpus), _count(cap))
        if usable < gpus_needed:
            return False
    if _count(capabilities.get("cpu_cores")) < _count(requirements.get("cpu_cores")):
        return False
    if _count(capabilities.get("ram_mb")) < _count(requirements.get("ram_mb")):
        return False
    software = capabilities.get("software")
    if not isinstance(software, dict):
        software = {}
    return all(software.get(name) for name in requirements.get("software") or [])


def price_ok(job: Job, node: Node) -> bool:
    """Whether the job pays at least the node's minimum price for its kind (a malformed minimum reads as 0)."""
    minimum = node.min_price.get(job.kind) if isinstance(node.min_price, dict) else None
    return minimum is None or _count(minimum) <= job.price_per_replica
