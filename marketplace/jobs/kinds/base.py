"""The typed interface of a job kind. Two strategies: a replicated kind (split into tasks; replicas' results
agree or not, optionally spot-checked) and a driven kind (starts itself, verifies each update itself, completes
its job itself: the train kind's rounds). A kind lives with its app and registers itself in AppConfig.ready()."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from marketplace.core.exceptions import ValidationFailed
from marketplace.core.queues import TaskName


@dataclass(frozen=True)
class TaskPlan:
    """One work unit a splitter produces: what the node runs and what it needs to run it."""

    payload: dict[str, Any]
    requirements: dict[str, Any]
    # Tasks of one group (a training round) go to different nodes: one node holds at most one of them at a time.
    group: int | None = None


class ParsedSpec(Protocol):
    """What a kind's parser returns: anything that dumps back to the JSON stored on the job."""

    def model_dump(self, *, mode: str = "json") -> dict[str, Any]: ...


class Kind(ABC):
    """What every kind states: its limits, how its spec is parsed and priced, what files it needs."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    # The schema of the spec (pydantic); a kind whose spec is validated elsewhere overrides parse() instead.
    spec_model: ClassVar[type[BaseModel] | None] = None
    defaults: ClassVar[Mapping[str, Any]] = {}
    artifact_max_bytes: ClassVar[int] = 16 * 2**20
    start_window_seconds: ClassVar[int] = 60
    lease_seconds: ClassVar[int] = 600
    # The longest one assignment may run on a node before the agent kills it and reports it failed.
    time_limit_seconds: ClassVar[int] = 3600
    asset_max_bytes: ClassVar[int] = 64 * 2**20
    asset_suffixes: ClassVar[tuple[str, ...]] = ()
    # The most replicas a poster may ask for.
    max_replication: ClassVar[int] = 5
    # The Celery task run once a job of this kind has completed (with the job id), e.g. merge its chunks.
    on_complete: ClassVar[TaskName | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A concrete kind must be able to parse its spec: refused when the class is defined, not at the first job.
        if "name" in cls.__dict__ and cls.spec_model is None and cls.parse is Kind.parse:
            raise TypeError(f"the {cls.__dict__['name']} kind needs a spec_model or its own parse()")

    def parse(self, spec: dict[str, Any]) -> ParsedSpec:
        """The validated spec; ValidationFailed names each bad field as spec.<path>."""
        model = self.spec_model
        assert model is not None  # __init_subclass__ refused kinds without one (or with their own parse)
        try:
            return model.model_validate(spec)
        except ValidationError as exc:
            fields: dict[str, list[str]] = {}
            for error in exc.errors(include_url=False):
                path = ".".join(["spec", *(str(part) for part in error["loc"])])
                fields.setdefault(path, []).append(error["msg"])
            raise ValidationFailed(fields) from None

    @abstractmethod
    def task_count(self, spec: Any) -> int:
        """How many tasks the quote covers."""

    def check(self, spec: Any, poster: Any) -> None:
        """Checks that need the poster (raise ValidationFailed); none by default."""
        return None

    def required_assets(self, spec: dict[str, Any]) -> list[str]:
        """The files the poster uploads before the job may start (paths as the spec writes them)."""
        return []

    def inputs(self, assignment: Any, task: Any) -> list[dict[str, Any]]:
        """The files an assignment's runner downloads ({"path", "url", "sha256"}): by default the job's assets."""
        return [
            {"path": a.path, "url": f"/api/assignments/{assignment.id}/inputs/{a.id}/", "sha256": a.sha256}
            for a in task.job.assets.order_by("path")
        ]


V = TypeVar("V")


class ReplicatedKind(Kind, Generic[V]):
    """Split into tasks; each task's replicas run on different nodes and the majority that agrees is accepted."""

    @abstractmethod
    def split(self, spec: Any) -> list[TaskPlan]:
        """The job's tasks, from its parsed spec."""

    @abstractmethod
    def result_value(self, result: Any) -> V:
        """The comparable value of one result; ValueError when the result is malformed."""

    def agree(self, a: V, b: V) -> bool:
        """Whether two replicas' values agree: equality unless the kind has a tolerance."""
        return a == b

    def explain(self, accepted: V, value: V) -> str:
        """How a rejected value differs from an accepted one (empty: nothing more to say than "differs")."""
        return ""

    def result_discard(self, result: Any) -> None:
        """Free what result_value left behind for `result` (files unpacked from its artifact): called once a verdict
        rejected or cancelled it, and once its job's output is built. Nothing by default."""
        return None


class SpotCheckedKind(ReplicatedKind[V]):
    """A replicated kind that can check one replica without another: trusted nodes' work gets adaptive
    replication (replicated only with probability p, otherwise spot-checked by the marketplace)."""

    @abstractmethod
    def spot_check(self, task: Any, value: V) -> tuple[bool, str]:
        """(ok, reason) for the task's single replica."""


class DrivenKind(Kind):
    """A kind that drives itself (train rounds): start() prepares the job and returns its first tasks, verify()
    judges each submitted update, and the kind completes its job itself."""

    max_replication: ClassVar[int] = 1

    @abstractmethod
    def start(self, job: Any) -> list[TaskPlan]:
        """Prepare a funded job; ValueError when it cannot run as posted (it then fails and is refunded)."""

    @abstractmethod
    def verify(self, task_id: Any) -> str:
        """Judge a task's submitted update(s); returns the task's state afterwards."""
