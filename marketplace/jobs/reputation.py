"""Trust that has to be earned: a node's reputation per job kind (nodes.NodeReputation), what counts towards it, how
it decays, and what it buys (adaptive replication, a place early in the scheduler's queue).

An accepted result counts (+1) only on a job of another poster (job.poster ≠ node.operator), with replication ≥ 2
(its result agreed with a replica of another operator and network, or, on a spot-checked task, passed the
marketplace's full re-render of one image), at a price no lower than the kind's market price (`market_price`). So
an operator who posts itself cheap replication-1 jobs, or underpays the network to keep honest nodes away, farms
nothing. The score halves every REPUTATION_HALF_LIFE_DAYS (applied when read and when updated); a wrong result sets
it to 0 for that kind only. A node is trusted on a kind at a decayed score ≥ TRUSTED_AFTER."""

from __future__ import annotations

import logging
import secrets
import statistics
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from marketplace.jobs import kinds
from marketplace.jobs.kinds import DrivenKind, SpotCheckedKind
from marketplace.jobs.models import Job, JobState, Task
from marketplace.nodes.models import Node, NodeReputation

logger = logging.getLogger(__name__)

# The jobs whose prices make the market price: posted and paid for (a draft costs nothing to post, and a
# cancelled or failed one may never have been meant to run).
PRICED_STATES = (JobState.FUNDED, JobState.RUNNING, JobState.COMPLETED)


def decayed(score: float, since: datetime, now: datetime) -> float:
    """`score` as it stood at `since`, halved every REPUTATION_HALF_LIFE_DAYS until `now`."""
    half_life = float(settings.HASHWORK["REPUTATION_HALF_LIFE_DAYS"]) * 86400.0
    elapsed = max(0.0, (now - since).total_seconds())
    return float(score * 0.5 ** (elapsed / half_life))


def reputation_of(*, node_id: UUID, kind: str, now: datetime | None = None) -> float:
    """The node's decayed reputation for `kind` (0 when it has earned none)."""
    row = NodeReputation.objects.filter(node_id=node_id, kind=kind).values_list("score", "updated_at").first()
    return 0.0 if row is None else decayed(row[0], row[1], now or timezone.now())


def reputations(*, node_ids: Iterable[UUID], now: datetime | None = None) -> dict[UUID, dict[str, float]]:
    """Every listed node's decayed reputation, by kind (nodes with none are absent); one query."""
    now = now or timezone.now()
    found: dict[UUID, dict[str, float]] = {}
    rows = NodeReputation.objects.filter(node_id__in=list(node_ids)).values_list(
        "node_id", "kind", "score", "updated_at"
    )
    for node_id, kind, score, updated_at in rows:
        found.setdefault(node_id, {})[kind] = decayed(score, updated_at, now)
    return found


def trusted(*, node_id: UUID, kind: str, now: datetime | None = None) -> bool:
    """Whether the node has earned TRUSTED_AFTER (decayed) on `kind`."""
    return reputation_of(node_id=node_id, kind=kind, now=now) >= float(settings.HASHWORK["TRUSTED_AFTER"])


def market_price(kind: str) -> int | None:
    """The kind's going price per replica: the upper median, over its last REPUTATION_PRICE_JOBS funded, running
    or completed jobs, of each poster's latest price (None before any). One vote per poster: a poster flooding the
    market with cheap (or dear) jobs moves the median by one place, not to its price."""
    rows = (
        Job.objects.filter(kind=kind, state__in=PRICED_STATES)
        .order_by("-created_at")
        .values_list("poster_id", "price_per_replica")[: int(settings.HASHWORK["REPUTATION_PRICE_JOBS"])]
    )
    latest: dict[int, int] = {}
    for poster_id, price in rows:
        latest.setdefault(poster_id, int(price))
    return statistics.median_high(latest.values()) if latest else None


def _not_counted(*, job: Job, operator_id: int) -> str | None:
    """Why an accepted result on `job`, by a node of `operator_id`, earns no reputation; None when it does."""
    if job.poster_id == operator_id:
        return "its operator posted the job"
    # A replicated kind's lone replica is checked by nobody; a driven kind (train) checks every result itself
    # (progress, norm, loss, replays), so its replication does not matter.
    if job.replication < 2 and not isinstance(kinds.get(job.kind), DrivenKind):
        return f"the job's replication is {job.replication}"
    going = market_price(job.kind)
    if going is not None and int(job.price_per_replica) < going:
        return f"the job pays {job.price_per_replica}, below the {job.kind} market price of {going}"
    return None


def reputation_credit(*, assignment_id: UUID, node_id: UUID, now: datetime | None = None) -> bool:
    """An accepted result: +1 to its node's reputation for the job's kind, if the result counts (see the module
    docstring). Called by `verification.assignment_accept` under the node's row lock, which serialises every
    change to the node's reputation rows. Returns whether it counted."""
    now = now or timezone.now()
    job = Job.objects.filter(tasks__assignments__id=assignment_id).first()
    operator_id = Node.objects.filter(id=node_id).values_list("operator_id", flat=True).first()
    if job is None or operator_id is None:
        return False
    why = _not_counted(job=job, operator_id=operator_id)
    if why:
        logger.info("assignment %s of node %s earns no %s reputation: %s", assignment_id, node_id, job.kind, why)
        return False
    row, _ = NodeReputation.objects.get_or_create(node_id=node_id, kind=job.kind, defaults={"updated_at": now})
    score = decayed(row.score, row.updated_at, now) + 1.0
    NodeReputation.objects.filter(id=row.id).update(score=score, updated_at=now)
    return True


def reputation_reset(*, node_id: UUID, kind: str, reason: str, now: datetime | None = None) -> None:
    """A wrong result: the node's reputation for `kind` is 0 again (its other kinds keep theirs)."""
    now = now or timezone.now()
    NodeReputation.objects.update_or_create(node_id=node_id, kind=kind, defaults={"score": 0.0, "updated_at": now})
    logger.warning("node %s: %s reputation reset to 0: %s", node_id, kind, reason)


def node_orders(nodes: list[Node], kind_names: Iterable[str], now: datetime | None = None) -> dict[str, list[Node]]:
    """For each kind, the nodes in the order the scheduler offers that kind's work: highest reputation on the kind
    first, then the old counters (longest accepted run, fewest invalid, most valid) to break ties."""
    earned = reputations(node_ids=[n.id for n in nodes], now=now)
    return {kind: _ordered(nodes, earned, kind) for kind in set(kind_names)}


def _ordered(nodes: list[Node], earned: dict[UUID, dict[str, float]], kind: str) -> list[Node]:
    return sorted(
        nodes,
        key=lambda n: (
            -earned.get(n.id, {}).get(kind, 0.0),
            -n.consecutive_valid,
            n.invalid_count,
            -n.valid_count,
            str(n.id),
        ),
    )


def spot_check_maybe(*, task: Task, job: Job, node: Node) -> None:
    """Adaptive replication: the first replica of a task of a spot-checkable kind, on a node trusted on that kind,
    may be the only one (with probability 1 - REPLICATION_P); it is then spot-checked by the marketplace. Called
    under the lease's row locks."""
    if not isinstance(kinds.get(job.kind), SpotCheckedKind) or job.replication < 2:
        return
    if not trusted(node_id=node.id, kind=job.kind):
        return
    if secrets.SystemRandom().random() < settings.HASHWORK["REPLICATION_P"]:
        return
    # Only while this is the task's sole replica: a concurrent lease of a second one keeps full replication.
    Task.objects.filter(id=task.id, live_replicas=1, replicas_wanted=job.replication, spot_check=False).update(
        replicas_wanted=1, spot_check=True
    )
