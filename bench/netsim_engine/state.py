"""What one simulated run holds: jobs, tasks, assignments (as jobs.models has them) and the counters it reports."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .policies import REPLICATION, policy_settings
from .population import HONEST, LAZY, SYBIL_BASE, Node

# Assignment states (as jobs.models names them) and task states.
LEASED, SUBMITTED, ACCEPTED, REJECTED, EXPIRED, FAILED, CANCELLED = range(7)
OPEN, DONE, STOPPED = 0, 1, 2
# Event kinds, in the heap as (time, sequence, kind, object).
SUBMIT, FAIL, EXPIRE, ARRIVE, PASS = range(5)


# What a completed task's containers become: read-only, so a path that wrongly wrote to one would raise.
GONE: Any = MappingProxyType({})
GONE_LIST: Any = ()
GONE_SET: Any = frozenset()


class Job:
    __slots__ = ("arrive", "blocked", "done", "failures", "finished", "poster", "seq", "size", "state", "tasks")

    def __init__(self, seq: int, arrive: float, poster: int, size: int) -> None:
        self.seq, self.arrive, self.poster, self.size = seq, arrive, poster, size
        self.tasks: list[Task] = []
        self.done = 0
        self.state = OPEN
        self.blocked: set[int] = set()
        self.failures: dict[int, int] = {}
        self.finished = 0.0


class Task:
    __slots__ = (
        "holders",
        "index",
        "job",
        "judged",
        "live",
        "lost_attempts",
        "lost_nodes",
        "lost_operators",
        "open",
        "queued",
        "results",
        "spot_check",
        "state",
        "taken",
        "uid",
        "wanted",
        "work",
    )  # fmt: skip

    def __init__(self, uid: int, job: Job, index: int, work: float) -> None:
        self.uid, self.job, self.index, self.work = uid, job, index, work
        self.wanted, self.live, self.spot_check, self.state = REPLICATION, 0, False, OPEN
        self.holders: list[Any] = []
        self.taken: set[int] = set()
        self.lost_nodes: set[int] = set()
        self.lost_operators: set[int] = set()
        self.lost_attempts = 0
        # The submitted and accepted replicas: their values (what kinds.decide compares) and themselves.
        self.results: dict[int, int] = {}
        self.judged: dict[int, Assignment] = {}
        self.open: dict[int, Assignment] = {}
        self.queued = False


class Assignment:
    __slots__ = ("id", "leased", "node", "state", "task", "value")

    def __init__(self, aid: int, task: Task, node: Node, value: int, leased: float) -> None:
        self.id, self.task, self.node, self.value, self.leased = aid, task, node, value, leased
        self.state = LEASED


@dataclass
class Stats:
    policy: str
    leases: int = 0
    submitted: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    late: int = 0
    accepted_replicas: int = 0
    rejected: int = 0
    units: int = 0
    wrong_units: int = 0
    wrong_by: dict[str, int] = field(default_factory=dict)
    units_in_horizon: int = 0
    spot_checks: int = 0
    spot_caught: int = 0
    spot_work_replicas: float = 0.0
    busy_slot_s: float = 0.0
    jobs_done: list[float] = field(default_factory=list)
    jobs_failed: int = 0
    jobs_total: int = 0
    units_per_hour: list[int] = field(default_factory=list)
    leases_per_minute: list[int] = field(default_factory=list)
    events: int = 0
    wall_s: float = 0.0


def result_of(task: Task, node: Node, aid: int, rng: random.Random, cheat_prob: float) -> int:
    """What `node` returns for its assignment `aid` of `task` (see population: HONEST, LAZY, SYBIL_BASE)."""
    cheat = node.cheat
    if cheat is None:
        return HONEST
    if cheat == "lazy":
        return LAZY
    if cheat == "random":
        return -aid if rng.random() < cheat_prob else HONEST
    wrong = SYBIL_BASE + node.operator
    mine = [a for a in task.open.values() if a.node.operator == node.operator]
    if mine:
        # The operator holds another replica of this task: both return the same wrong answer.
        for a in mine:
            a.value = wrong
        return wrong
    # Otherwise it gambles only once its streak looks trusted (the rule is public), hoping for a lone replica.
    if node.consecutive_valid >= policy_settings("TRUSTED_AFTER") and rng.random() < cheat_prob:
        return wrong
    return HONEST
