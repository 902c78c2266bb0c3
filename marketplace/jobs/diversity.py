"""Who may hold a replica: replicas of one task go to distinct operators and distinct networks (so one person's
Sybil nodes cannot outvote an honest replica), and a node on probation holds little work. `leasing.leases_grant`
asks these under its row locks, which makes them binding; the scheduler's plan (`leasing.schedule`) asks them first,
to skip early."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from django.db.models import Count

from marketplace.jobs.models import ASSIGNMENT_ATTEMPT_LOST, ASSIGNMENT_LIVE, ASSIGNMENT_OPEN, Assignment
from marketplace.nodes.models import Node
from marketplace.nodes.network import network_key

logger = logging.getLogger(__name__)

# The replicas that bar their operator and network from another replica of the task: those that still count
# (leased, running, submitted, accepted), so no two votes on a task are one operator's or one network's. A lost,
# handed-back or rejected replica does not vote, and its operator may try the task again on another node.
COUNTED = ASSIGNMENT_LIVE
# What a node on probation may hold only PROBATION_MAX_LIVE of: work it has not finished. Submitted replicas waiting
# for their verdict do not count: they often wait on another new node's replica, and counting them deadlocked a
# small network (three new nodes, each holding a submitted replica of a task that needed one of the others).
PROBATION_COUNTED = ASSIGNMENT_OPEN


@dataclass(frozen=True)
class Holder:
    """Whose a task's replica is: its node's operator and network (None: a network that groups no nodes)."""

    operator_id: int
    network: str | None


def network_of(address: str | None) -> str | None:
    """The network a node at `address` counts in for REPLICA_DISTINCT_NETWORKS (None when the rule is off)."""
    if not settings.HASHWORK["REPLICA_DISTINCT_NETWORKS"]:
        return None
    return network_key(address, private_are_one=settings.HASHWORK["PRIVATE_NETWORKS_ARE_ONE"])


def holder_of(node: Node) -> Holder:
    return Holder(operator_id=node.operator_id, network=network_of(node.address))


def holders(task_ids: Iterable[UUID]) -> defaultdict[UUID, list[Holder]]:
    """Each task's counted replicas, by whose they are (an empty list for a task with none)."""
    found: dict[UUID, list[Holder]] = defaultdict(list)
    rows = Assignment.objects.filter(task_id__in=list(task_ids), state__in=COUNTED).values_list(
        "task_id", "node__operator_id", "node__address"
    )
    for task_id, operator_id, address in rows:
        found[task_id].append(Holder(operator_id=operator_id, network=network_of(address)))
    return found


def conflict(candidate: Holder, held: Iterable[Holder]) -> str | None:
    """Why a node of `candidate` may not hold another replica of a task whose replicas are `held`, or None."""
    for holder in held:
        if holder.operator_id == candidate.operator_id:
            return f"its operator {candidate.operator_id} already holds a replica (one replica per operator)"
        if candidate.network is not None and holder.network == candidate.network:
            return (
                f"its network {candidate.network} already holds a replica "
                "(one replica per network, REPLICA_DISTINCT_NETWORKS)"
            )
    return None


def on_probation(valid_count: int) -> bool:
    """A node with fewer accepted results than PROBATION_VALID_RESULTS is new: it holds little work."""
    return bool(valid_count < settings.HASHWORK["PROBATION_VALID_RESULTS"])


def probation_full(node: Node) -> bool:
    """Whether `node` is on probation and already holds PROBATION_MAX_LIVE open assignments (logged)."""
    if not on_probation(node.valid_count):
        return False
    live = Assignment.objects.filter(node_id=node.id, state__in=PROBATION_COUNTED).count()
    if probation_left(live) > 0:
        return False
    logger.info(
        "node %s is on probation (%d accepted results of PROBATION_VALID_RESULTS=%d): it holds %d open assignments, "
        "the most it may (PROBATION_MAX_LIVE)",
        node.id, node.valid_count, settings.HASHWORK["PROBATION_VALID_RESULTS"], live,
    )  # fmt: skip
    return True


def probation_room(nodes: Iterable[Node]) -> dict[UUID, int]:
    """How many more open assignments each node on probation may take (nodes not on probation are absent)."""
    new = [n.id for n in nodes if on_probation(n.valid_count)]
    if not new:
        return {}
    live = dict(
        Assignment.objects.filter(node_id__in=new, state__in=PROBATION_COUNTED)
        .order_by()
        .values("node_id")
        .annotate(n=Count("id"))
        .values_list("node_id", "n")
    )
    return {node_id: probation_left(live.get(node_id, 0)) for node_id in new}


def probation_left(live: int) -> int:
    """How many more open assignments a node on probation that holds `live` of them may take."""
    return max(0, int(settings.HASHWORK["PROBATION_MAX_LIVE"]) - live)


def operators_fail_task(lost_operators: int) -> bool:
    """Whether a task whose attempts nodes of `lost_operators` distinct operators have lost (or failed) fails:
    TASK_FAIL_OPERATORS of them, so one operator's throwaway nodes, however many, cannot fail a task."""
    return lost_operators >= settings.HASHWORK["TASK_FAIL_OPERATORS"]


def lost_operators(task_id: UUID) -> int:
    """How many distinct operators' nodes have lost (let expire) or failed an attempt at the task."""
    return (
        Assignment.objects.filter(task_id=task_id, state__in=ASSIGNMENT_ATTEMPT_LOST)
        .order_by()  # the model's ordering would join the DISTINCT
        .values("node__operator_id")
        .distinct()
        .count()
    )
