"""How much the marketplace trusts a node's training: how often its updates are replayed, and what a caught update
costs it (blocked from the job, reputation reset). The one place a later reputation model replaces."""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any
from uuid import UUID

from django.conf import settings

from marketplace.jobs import reputation
from marketplace.jobs.models import JobNodeBlock
from marketplace.nodes.models import Node

logger = logging.getLogger(__name__)


def replay_probability(node: Node) -> float:
    """The chance that this node's next update is replayed. It falls linearly from 1 to TRAIN_REPLAY_SHARE as the
    node's train reputation (jobs.reputation: accepted updates on other posters' jobs at no less than the market
    price, decaying, reset when caught) grows to TRUSTED_AFTER × (1 + invalid_count), and it is never below
    TRAIN_REPLAY_FLOOR. A new node, or one just caught, is always replayed; streaks on other kinds (cheap
    benchmark tasks, say) buy nothing here."""
    hw = settings.HASHWORK
    floor = float(hw["TRAIN_REPLAY_FLOOR"])
    trusted = max(floor, float(hw["TRAIN_REPLAY_SHARE"]))
    score = reputation.reputation_of(node_id=node.id, kind="train")
    if score <= 0 or node.consecutive_valid == 0:
        return 1.0
    streak = int(hw["TRUSTED_AFTER"]) * (1 + node.invalid_count)
    earned = min(1.0, score / streak)
    return max(floor, 1.0 - earned * (1.0 - trusted))


def replay_chooser(job_id: UUID, index: int) -> random.Random:
    """The draws of a round's replays: TRAIN_REPLAY_SEED makes them reproducible per job and round (tests)."""
    seed = settings.HASHWORK.get("TRAIN_REPLAY_SEED")
    if seed is None:
        return secrets.SystemRandom()
    return random.Random(f"{seed}:{job_id}:{index}")  # noqa: S311 - reproducible on purpose, tests only


def node_caught(*, job_id: UUID, node_id: UUID, reason: str) -> None:
    """A node's update proved work not done: it gets no more of this job's work and its streak restarts (the
    rejection itself counted invalid_count + 1 and reset consecutive_valid; repeated here in case it had not)."""
    block, _ = JobNodeBlock.objects.get_or_create(job_id=job_id, node_id=node_id)
    JobNodeBlock.objects.filter(id=block.id).update(blocked=True)
    Node.objects.filter(id=node_id).update(consecutive_valid=0)
    reputation.reputation_reset(node_id=node_id, kind="train", reason=reason)
    logger.warning("node %s blocked from train job %s: %s", node_id, job_id, reason)


def nodes_of(node_ids: set[Any]) -> dict[Any, Node]:
    return {n.id: n for n in Node.objects.filter(id__in=node_ids)}
