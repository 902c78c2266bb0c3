"""The two policies the simulator compares on one network: the marketplace's own rules, imported from its code, and
plain 2× replication (BOINC's default without its options: two replicas on two nodes, a third when they differ)."""

from __future__ import annotations

from typing import Any

from marketplace.jobs import diversity, policy, reputation
from marketplace.jobs.leases import lease_bound_seconds, lease_windows

from .population import Node

KIND = "render"
REPLICATION = 2
# Every simulated job pays the kind's going price, so the price rule of reputation never refuses a result.
PRICE = 1000


class Plain:
    """Plain 2× replication: any two distinct nodes, first come first served; no trust, no spot checks, no
    diversity, no probation; a task fails after TASK_FAIL_OPERATORS lost attempts of any nodes."""

    name = "plain 2x"
    adaptive = False
    # Whether a verdict moves a node in the order it waits in for work.
    reorders = False

    def __init__(self) -> None:
        self.start_window, self.lease = lease_windows(KIND)
        self.bound = lease_bound_seconds(KIND)

    def key(self, node: Node) -> Any:
        return (node.idle_since, node.id)

    def room(self, node: Node) -> int:
        return node.slots - node.busy

    def eligible(self, task: Any, node: Node) -> bool:
        return node.id not in task.taken

    def single_replica(self, node: Node, draw: float, t: float) -> bool:
        return False

    def task_fails(self, task: Any) -> bool:
        return task.lost_attempts >= policy_settings("TASK_FAIL_OPERATORS")

    def quorum(self) -> int:
        return policy.quorum(REPLICATION)

    def exhausted(self, wanted: int) -> bool:
        return policy.replicas_exhausted(wanted, REPLICATION)

    def accepted(self, node: Node, poster: int, t: float) -> None:
        node.valid_count += 1
        node.consecutive_valid += 1

    def wrong(self, node: Node, job: Any, t: float) -> None:
        node.invalid_count += 1
        node.consecutive_valid = 0

    def lost(self, node: Node, job: Any) -> None:
        node.consecutive_valid = 0


class Marketplace(Plain):
    """The marketplace's rules, each a function of its code: the scheduler's order (`reputation.order_key`),
    replica diversity (`diversity.conflict`), probation (`diversity.on_probation`, `probation_left`), adaptive
    replication (`reputation.spot_checkable`, `is_trusted`, `single_replica_drawn`), reputation credit and decay
    (`uncounted_reason`, `halved`), the job block after failures and the per-operator fail rule
    (`policy.node_blocked_after`, `diversity.operators_fail_task`), the quorum and the extra-replica limit
    (`policy.quorum`, `replicas_exhausted`), the lease windows and time-limit bound (`jobs.leases`)."""

    name = "marketplace"
    reorders = True

    def __init__(self) -> None:
        super().__init__()
        self.adaptive = reputation.spot_checkable(KIND, REPLICATION)

    def key(self, node: Node) -> Any:
        # Decay halves every score by the same factor over the same time, so scores carried back to time 0 order
        # the nodes as their decayed values at any common moment do: the key need not change while a node waits.
        score = node.score / reputation.halved(1.0, node.score_t) if node.score else 0.0
        return reputation.order_key(node, score)

    def room(self, node: Node) -> int:
        free = node.slots - node.busy
        # Accepted results only add up: a node off probation stays off, and need not be asked again.
        if not node.proven:
            if diversity.on_probation(node.valid_count):
                return min(free, diversity.probation_left(node.busy))
            node.proven = True
        return free

    def eligible(self, task: Any, node: Node) -> bool:
        if node.id in task.taken or node.id in task.job.blocked:
            return False
        return diversity.conflict(node.holder, task.holders) is None

    def single_replica(self, node: Node, draw: float, t: float) -> bool:
        trusted = reputation.is_trusted(reputation.halved(node.score, t - node.score_t))
        return self.adaptive and reputation.single_replica_drawn(trusted=trusted, draw=draw)

    def task_fails(self, task: Any) -> bool:
        return diversity.operators_fail_task(len(task.lost_operators))

    def accepted(self, node: Node, poster: int, t: float) -> None:
        super().accepted(node, poster, t)
        why = reputation.uncounted_reason(
            kind=KIND, poster_id=poster, operator_id=node.operator, replication=REPLICATION, price=PRICE, going=PRICE
        )
        if why is None:
            node.score = reputation.halved(node.score, t - node.score_t) + 1.0
            node.score_t = t

    def wrong(self, node: Node, job: Any, t: float) -> None:
        super().wrong(node, job, t)
        node.score, node.score_t = 0.0, t
        job.blocked.add(node.id)

    def lost(self, node: Node, job: Any) -> None:
        super().lost(node, job)
        failures = job.failures.get(node.id, 0) + 1
        job.failures[node.id] = failures
        if policy.node_blocked_after(failures):
            job.blocked.add(node.id)


def policy_settings(name: str) -> int:
    from django.conf import settings

    return int(settings.HASHWORK[name])
