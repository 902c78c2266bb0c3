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
import statistics
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from marketplace.jobs import kinds
from marketplace.jobs.kinds import DrivenKind, SpotCheckedKind
from marketplace.jobs.models import Job, JobState
from marketplace.nodes.models import Node, NodeReputation

logger = logging.getLogger(__name__)

# The jobs whose prices make the market price: posted and paid for (a draft costs nothing to post, and a
# cancelled or failed one may never have been meant to run).
PRICED_STATES = (JobState.FUNDED, JobState.RUNNING, JobState.COMPLETED)


def halved(score: float, elapsed_seconds: float) -> float:
    """`score` after `elapsed_seconds` of decay: halved every REPUTATION_HALF_LIFE_DAYS (never grown)."""
    half_life = float(settings.HASHWORK["REPUTATION_HALF_LIFE_DAYS"]) * 86400.0
    return float(score * 0.5 ** (max(0.0, elapsed_seconds) / half_life))


def decayed(score: float, since: datetime, now: datetime) -> float:
    """`score` as it stood at `since`, halved every REPUTATION_HALF_LIFE_DAYS until `now`."""
    return halved(score, (now - since).total_seconds())


def is_trusted(score: float) -> bool:
    """Whether a (decayed) reputation of `score` on a kind makes a node trusted on it: TRUSTED_AFTER or more."""
    return score >= float(settings.HASHWORK["TRUSTED_AFTER"])


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
    return is_trusted(reputation_of(node_id=node_id, kind=kind, now=now))


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
    return uncounted_reason(
        kind=job.kind,
        poster_id=job.poster_id,
        operator_id=operator_id,
        replication=job.replication,
        price=int(job.price_per_replica),
        going=market_price(job.kind),
    )


def uncounted_reason(
    *, kind: str, poster_id: int, operator_id: int, replication: int, price: int, going: int | None
) -> str | None:
    """Why an accepted result on a job of `kind` (posted by `poster_id` at `price` per replica, with `replication`,
    while the kind's market price is `going`), by a node of `operator_id`, earns no reputation; None when it does."""
    if poster_id == operator_id:
        return "its operator posted the job"
    # A replicated kind's lone replica is checked by nobody; a driven kind (train) checks every result itself
    # (progress, norm, loss, replays), so its replication does not matter.
    if replication < 2 and not isinstance(kinds.get(kind), DrivenKind):
        return f"the job's replication is {replication}"
    if going is not None and price < going:
        return f"the job pays {price}, below the {kind} market price of {going}"
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
    return sorted(nodes, key=lambda n: order_key(n, earned.get(n.id, {}).get(kind, 0.0)))


def order_key(node: Any, score: float) -> tuple[float, int, int, int, str]:
    """Where a node with reputation `score` on a kind (and its counters: consecutive_valid, invalid_count,
    valid_count; then its id) stands in the scheduler's order for that kind's work: smallest first."""
    return (-score, -node.consecutive_valid, node.invalid_count, -node.valid_count, str(node.id))


def spot_checkable(kind: str, replication: int) -> bool:
    """Whether a job of `kind` with `replication` gets adaptive replication: a spot-checkable kind, replicated."""
    return isinstance(kinds.get(kind), SpotCheckedKind) and replication >= 2


def single_replica_drawn(*, trusted: bool, draw: float) -> bool:
    """Adaptive replication's draw for the first replica of a spot-checkable task: a node trusted on the kind
    holds the task's only replica unless `draw` (uniform in [0, 1)) falls below REPLICATION_P."""
    return trusted and draw >= settings.HASHWORK["REPLICATION_P"]
