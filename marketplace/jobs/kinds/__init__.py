"""The registry of job kinds. A kind is a class implementing ReplicatedKind (or SpotCheckedKind) or DrivenKind
(kinds/base.py); its app registers an instance from AppConfig.ready(), and nodeagent.runners has a runner of the
same name. The rule that decides a task from its replicas (`decide`) lives here too."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from marketplace.core.exceptions import ValidationFailed
from marketplace.jobs.kinds.base import DrivenKind, Kind, ParsedSpec, ReplicatedKind, SpotCheckedKind, TaskPlan


@dataclass(frozen=True)
class Verdict:
    """Outcome of comparing a task's replicas: who agrees with the majority, who does not, and whether another
    replica is needed to decide."""

    accepted: frozenset[str]
    rejected: frozenset[str]
    needs_another_replica: bool


def decide(values: Mapping[str, Any], *, quorum: int, agree: Callable[[Any, Any], bool] = operator.eq) -> Verdict:
    """Decide a task from its replicas' values ({assignment id: value}).

    Replicas are grouped by agreement with each group's first member. The largest group wins if it has at
    least `quorum` members: they are accepted and every other replica rejected. Otherwise nothing is decided
    and one more replica is needed.
    """
    groups: list[list[str]] = []
    for assignment_id in sorted(values):
        for group in groups:
            if agree(values[group[0]], values[assignment_id]):
                group.append(assignment_id)
                break
        else:
            groups.append([assignment_id])
    if not groups or max(len(g) for g in groups) < quorum:
        return Verdict(frozenset(), frozenset(), needs_another_replica=True)
    winners = max(groups, key=len)
    if sum(len(g) == len(winners) for g in groups) > 1:
        # Two groups of equal size: no majority, whatever the quorum says.
        return Verdict(frozenset(), frozenset(), needs_another_replica=True)
    accepted = frozenset(winners)
    return Verdict(accepted, frozenset(values) - accepted, needs_another_replica=False)


_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind (from its app's ready()); registering the same class again is a no-op."""
    existing = _REGISTRY.get(kind.name)
    if existing is not None:
        if type(existing) is type(kind):
            return existing
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValidationFailed({"kind": [f"Unknown job kind {name!r}; choose one of: {', '.join(names())}."]}) from None


def replicated(name: str) -> ReplicatedKind[Any]:
    """The kind `name`, which must be a replicated one (for code paths that only such kinds reach)."""
    kind = get(name)
    if not isinstance(kind, ReplicatedKind):
        raise TypeError(f"the {name} kind is not verified by replica agreement")
    return kind


def names() -> list[str]:
    return sorted(_REGISTRY)


def parse_spec(kind: Kind, spec: Any) -> ParsedSpec:
    """Validate `spec` with the kind's parser; errors name each field as spec.<path>."""
    if not isinstance(spec, dict):
        raise ValidationFailed({"spec": ["Must be a JSON object."]})
    return kind.parse(spec)


__all__ = [
    "DrivenKind",
    "Kind",
    "ParsedSpec",
    "ReplicatedKind",
    "SpotCheckedKind",
    "TaskPlan",
    "Verdict",
    "decide",
    "get",
    "names",
    "parse_spec",
    "register",
    "replicated",
]
