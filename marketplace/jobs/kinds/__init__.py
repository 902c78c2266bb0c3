"""The registry of job kinds: adding a kind means registering a spec schema, a splitter and a verifier here,
and a runner in nodeagent.runners under the same name."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from marketplace.core.exceptions import ValidationFailed


@dataclass(frozen=True)
class TaskPlan:
    """One work unit a splitter produces: what the node runs and what it needs to run it."""

    payload: dict[str, Any]
    requirements: dict[str, Any]
    # Tasks of one group (a training round) go to different nodes: one node holds at most one of them at a time.
    group: int | None = None


@dataclass(frozen=True)
class Kind:
    name: str
    spec_model: type[BaseModel]
    task_count: Callable[[Any], int]
    split: Callable[[Any], list[TaskPlan]]
    # The comparable value of one result (raises ValueError when the result is malformed), and whether two
    # replicas' values agree: equality for exact kinds, a tolerance for kinds like render RGB.
    result_value: Callable[[Any], Any]
    agree: Callable[[Any, Any], bool] = operator.eq
    # Why a replica's value differs from an accepted one (explain(accepted, value) -> reason), for kinds whose
    # comparison can say more than "differs": render names the image, the pass and the metric.
    explain: Callable[[Any, Any], str] | None = None
    artifact_max_bytes: int = 16 * 1024 * 1024
    start_window_seconds: int = 60
    lease_seconds: int = 600
    # The longest one assignment may run on a node before the agent kills it and reports it failed.
    time_limit_seconds: int = 3600
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # A kind whose spec is validated elsewhere (synthetic's render spec) parses it itself: the parser returns
    # the parsed spec or raises ValidationFailed naming each field as spec.<path>.
    parser: Callable[[dict[str, Any]], Any] | None = None
    # Called once a job of this kind has completed (for example: merge its chunks into one dataset).
    on_complete: str | None = None
    # A check of one replica without another (spot_check(task, result value) -> (ok, reason)); kinds that have
    # one get adaptive replication: trusted nodes' work is replicated only with probability p.
    spot_check: Callable[[Any, Any], tuple[bool, str]] | None = None
    # The files a spec needs uploaded before the job may start (paths as the spec writes them).
    required_assets: Callable[[dict[str, Any]], list[str]] | None = None
    asset_max_bytes: int = 64 * 2**20
    asset_suffixes: tuple[str, ...] = ()
    # The most replicas a poster may ask for (train verifies by replay and robust aggregation: exactly 1).
    max_replication: int = 5
    # Checks that need the poster (check(parsed spec, poster); raises ValidationFailed), e.g. that a train job's
    # dataset is a completed render job of the same poster.
    check: Callable[[Any, Any], None] | None = None
    # Kinds that run in rounds (train) drive themselves. `start(job)` prepares the job and returns its first
    # tasks, instead of split(spec); `verify(task_id)` replaces replica agreement; the kind completes the job.
    start: Callable[[Any], list[TaskPlan]] | None = None
    verify: Callable[[Any], str] | None = None
    self_completing: bool = False
    # The files an assignment's runner downloads (inputs(assignment, task) -> [{"path", "url", "sha256"}]);
    # by default the job's uploaded assets.
    inputs: Callable[[Any, Any], list[dict[str, Any]]] | None = None


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
    if kind.name in _REGISTRY:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValidationFailed({"kind": [f"Unknown job kind {name!r}; choose one of: {', '.join(names())}."]}) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def parse_spec(kind: Kind, spec: Any) -> Any:
    """Validate `spec` with the kind's schema; errors name each field as spec.<path>."""
    if not isinstance(spec, dict):
        raise ValidationFailed({"spec": ["Must be a JSON object."]})
    if kind.parser is not None:
        return kind.parser(spec)
    try:
        return kind.spec_model.model_validate(spec)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors(include_url=False):
            path = ".".join(["spec", *(str(part) for part in error["loc"])])
            fields.setdefault(path, []).append(error["msg"])
        raise ValidationFailed(fields) from None


from marketplace.jobs.kinds import benchmark as _benchmark  # noqa: E402  (registers itself)
from marketplace.jobs.kinds import render as _render  # noqa: E402  (registers itself)
from marketplace.jobs.kinds import train as _train  # noqa: E402  (registers itself)

__all__ = [
    "Kind",
    "TaskPlan",
    "Verdict",
    "_benchmark",
    "_render",
    "_train",
    "decide",
    "get",
    "names",
    "parse_spec",
    "register",
]
